"""API-key authentication for Django REST framework (the usage API): `Authorization: Bearer cvk_...`."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from gateway.models import KEY_PREFIX, ApiKey, hash_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, raw = header.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw.startswith(KEY_PREFIX):
            return None  # not ours: let session authentication answer
        key = ApiKey.objects.find_usable(hash_key(raw))
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid API key: it is unknown, revoked or expired, or its user or project is inactive.")
        return key.user, key

    def authenticate_header(self, request):
        return self.keyword


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """Describes ApiKeyAuthentication in the OpenAPI schema as a bearer token."""

    target_class = "gateway.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A CodeVector API key (cvk_...)."}
