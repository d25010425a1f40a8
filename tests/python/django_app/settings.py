"""Django settings of the ORM suite (tests/orm_django.rs): one database, pgshard's URL in
PGSHARD_URL (server-side binding when PGSHARD_SERVER_SIDE_BINDING=1), contrib auth and contenttypes, and the `shop` app whose table is sharded by id."""

import os
from urllib.parse import urlparse

_url = urlparse(os.environ["PGSHARD_URL"])

SECRET_KEY = "pgshard-orm-suite"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_app.shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username,
        "PASSWORD": _url.password,
        "HOST": _url.hostname,
        "PORT": _url.port,
        # PGSHARD_SERVER_SIDE_BINDING=1: psycopg 3 binds parameters on the server (extended
        # protocol with text parameters) instead of Django's default client-side binding.
        "OPTIONS": {
            "sslmode": "disable",
            "server_side_binding": os.environ.get("PGSHARD_SERVER_SIDE_BINDING") == "1",
        },
    }
}
