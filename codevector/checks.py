"""Configuration problems reported as Django system checks (`manage.py check`)."""

import os
import tempfile

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register()
def check_usage_buffer_dir(app_configs, **kwargs):
    """The disk buffer is the ledger's fallback; an unwritable one is a warning, not an error,
    because the gateway still serves while the database answers."""
    path = settings.USAGE_BUFFER_DIR
    hint = "Create it and give the gateway's user write access, or set USAGE_BUFFER_DIR to a writable folder."
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-", delete=True):
            pass
    except OSError as exc:
        return [
            Warning(
                f"USAGE_BUFFER_DIR {path} is not writable ({exc.strerror or exc}); usage cannot be buffered "
                "during a database outage.",
                hint=hint,
                id="codevector.W002",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_secret_key(app_configs, **kwargs):
    if not settings.DEBUG and settings.SECRET_KEY == settings.DEV_SECRET_KEY and not os.environ.get("SECRET_KEY"):
        return [
            Warning(
                "SECRET_KEY is not set: the development key is in use.",
                hint="Set SECRET_KEY to a long random value (python -c 'import secrets; print(secrets.token_urlsafe(50))').",
                id="codevector.W001",
            )
        ]
    return []
