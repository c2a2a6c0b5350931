"""The project's WSGI entry point, inside ``wsgiref.validate.validator``."""

import os
import warnings
import wsgiref.validate

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wsgitest_django.settings")
warnings.simplefilter("error", wsgiref.validate.WSGIWarning)

application = wsgiref.validate.validator(get_wsgi_application())
