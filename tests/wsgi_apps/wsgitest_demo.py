"""The bundled demo app (``apps/demo_app.py``) inside ``wsgiref.validate.validator``."""

from __future__ import annotations

import warnings
import wsgiref.validate

from demo_app import application as demo_application

warnings.simplefilter("error", wsgiref.validate.WSGIWarning)

application = wsgiref.validate.validator(demo_application)
