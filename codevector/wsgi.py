"""WSGI entry point, for tooling that wants one. Production serves codevector.asgi."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")
application = get_wsgi_application()
