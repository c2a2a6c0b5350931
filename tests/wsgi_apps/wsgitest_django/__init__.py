"""A minimal Django project for the framework tests (no database, CSRF middleware on)."""
