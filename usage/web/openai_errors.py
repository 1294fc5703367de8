"""OpenAI's error format and JSON for the OpenAI-shaped usage and costs API (usage.web.openai_usage):
errors as {"error": {"message", "type", "param", "code"}}, whatever raised them (a parameter, DRF's
authentication, permission or throttle), and Decimal amounts written as exact JSON numbers."""

import json
import re
from decimal import Decimal

from rest_framework import exceptions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.views import exception_handler


class OpenAIError(exceptions.APIException):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "invalid_value",
                 status: int = 400):
        super().__init__(message)
        self.status_code, self.param, self.openai_code = status, param, code


DRF_ERRORS = {  # status -> (type, code) for the errors DRF raises itself
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "insufficient_permissions"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
MISSING_KEY = ("Missing API key: send the API key of a CodeVector user who sees everyone's usage as "
               "'Authorization: Bearer cvk_...'.")


def _message(detail) -> str:
    if isinstance(detail, dict):
        return " ".join(f"{k}: {_message(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_message(v) for v in detail)
    return str(detail)


def openai_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None  # a server error: Django's 500
    if isinstance(exc, OpenAIError):
        error = {"message": str(exc.detail), "type": "invalid_request_error", "param": exc.param,
                 "code": exc.openai_code}
    else:
        kind, code = DRF_ERRORS.get(response.status_code, ("invalid_request_error", None))
        message = MISSING_KEY if isinstance(exc, exceptions.NotAuthenticated) else _message(exc.detail)
        if isinstance(exc, exceptions.NotAuthenticated):
            code = "missing_api_key"
        error = {"message": message, "type": kind, "param": None, "code": code}
    response.data = {"error": error}
    return response


# --- rendering: JSON whose Decimals are numbers written exactly -----------------------------------

_DECIMAL = re.compile(r'"\\u0000(-?[0-9]+(?:\.[0-9]+)?)\\u0000"')


def _mark_decimals(value):
    if isinstance(value, Decimal):
        return f"\x00{value:f}\x00"
    if isinstance(value, dict):
        return {k: _mark_decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark_decimals(v) for v in value]
    return value


def exact_json(data) -> str:
    """JSON with each Decimal written as a number, digit for digit (json would need a float)."""
    return _DECIMAL.sub(r"\1", json.dumps(_mark_decimals(data), separators=(",", ":")))


class ExactJSONRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return b"" if data is None else exact_json(data).encode()


class JSONOnly(BaseContentNegotiation):
    """Always JSON, whatever the Accept header says (as OpenAI's API)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
