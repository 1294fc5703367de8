"""ASGI entry point: /v1/ and the health probes go to the gateway's lean ASGI app, the rest to Django.

Django's request handler costs about a millisecond a request; the gateway path avoids it
entirely (see DESIGN.md). Django's handler refuses `lifespan`, so the dispatcher answers it,
letting the gateway open and close its pools and flush pending usage on shutdown.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

if not settings.DEBUG and not os.environ.get("SECRET_KEY"):  # a lone uvicorn process (gunicorn checks first)
    raise ImproperlyConfigured(settings.SECRET_KEY_MISSING)

django_application = get_asgi_application()

from gateway.app import GatewayApp, is_gateway_path  # noqa: E402

gateway_application = GatewayApp()


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await gateway_application.lifespan(scope, receive, send)
    elif scope["type"] == "http" and is_gateway_path(scope["path"]):
        await gateway_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)
