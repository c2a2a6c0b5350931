"""The ``status`` handler: the operator's live status page, its script and stylesheet, and its JSON."""
