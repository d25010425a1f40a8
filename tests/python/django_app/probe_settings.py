"""Django settings of the application probe (tests/python/django_probe.py): one database at
PGSHARD_URL (server-side binding when PGSHARD_SERVER_SIDE_BINDING=1) and the `probe` app."""

import os
from urllib.parse import urlparse

_url = urlparse(os.environ["PGSHARD_URL"])

SECRET_KEY = "pgshard-probe"
USE_TZ = True
TIME_ZONE = "America/New_York"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.postgres", "django_app.probe"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username,
        "PASSWORD": _url.password,
        "HOST": _url.hostname,
        "PORT": _url.port,
        "OPTIONS": {
            "sslmode": "disable",
            "server_side_binding": os.environ.get("PGSHARD_SERVER_SIDE_BINDING") == "1",
        },
    }
}
