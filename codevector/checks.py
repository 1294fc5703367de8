"""Configuration problems reported as Django system checks (`manage.py check`)."""

import os
import tempfile

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError

from gateway.models import ModelFacade, credential_variable_allowed, credential_variable_error


@register()
def check_usage_buffer_dir(app_configs, **kwargs):
    """The disk buffer is the ledger's fallback; an unwritable one is a warning, not an error,
    because the gateway still serves while the database answers."""
    path = settings.USAGE_BUFFER_DIR
    hint = "Create it and give the gateway's user write access, or set USAGE_BUFFER_DIR to a writable folder."
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
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


@register(Tags.security)
def check_secret_key(app_configs, **kwargs):
    """Without a key the web server refuses to start (gunicorn.conf.py, codevector.asgi); other
    commands (migrate, create_facade) still run, so this is a warning here."""
    if not settings.DEBUG and not os.environ.get("SECRET_KEY"):
        return [Warning(settings.SECRET_KEY_MISSING + ".",
                        hint="The web server refuses to start without it; DEBUG=true uses a development key.",
                        id="codevector.W001")]
    return []


def _facades_with_forbidden_credentials() -> list[ModelFacade]:
    try:
        return [f for f in ModelFacade.objects.exclude(api_key_env="").only("name", "api_key_env")
                if not credential_variable_allowed(f.api_key_env)]
    except DatabaseError:  # no tables yet (before migrate) or no database: nothing to check
        return []


def _credential_problems(level, id):
    return [level(f"Facade {facade.name!r}: {credential_variable_error(facade.api_key_env)} The gateway "
                  "answers its requests with 502 and never reads that variable.",
                  hint=f"Move the key to e.g. CODEVECTOR_UPSTREAM_{facade.api_key_env} and run `manage.py "
                       f"create_facade {facade.name} --api-key-env CODEVECTOR_UPSTREAM_{facade.api_key_env}`, or "
                       "add the name to GATEWAY_UPSTREAM_KEY_VARIABLES.", obj=facade, id=id)
            for facade in _facades_with_forbidden_credentials()]


@register(Tags.security)
def check_facade_credentials(app_configs, **kwargs):
    """A warning, not an error: an error would block `migrate` and `create_facade`, which fix it."""
    return _credential_problems(Warning, "codevector.W003")


@register(Tags.security, deploy=True)
def check_facade_credentials_deploy(app_configs, **kwargs):
    return _credential_problems(Error, "codevector.E003")
