"""Settings of the test project: production-like (DEBUG off), no database, CSRF on."""

SECRET_KEY = "test-only-not-secret-7c1b2f0e9d"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "wsgitest_django.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": False,
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
APPEND_SLASH = True
LOGGING_CONFIG = None
