"""The one upstream client each gateway process shares (gateway.http_client), and which headers
cross the gateway in each direction.

Neither httpx (its pool collapsed with hundreds of requests in flight) nor aiohttp's ClientSession
(its per-request machinery cost as much CPU as the gateway's own steps): gateway.http_client says why.
"""

from django.conf import settings

from gateway.http_client import HttpClient

# Headers a caller may pass upstream; everything else (cookies, the caller's credentials,
# x-forwarded-*, hop-by-hop headers) stays behind. Never openai-organization or openai-project:
# they choose who pays, so they are the facade's (its routing fields), never the caller's.
FORWARDED_REQUEST_HEADERS = frozenset({
    "content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta", "user-agent", "x-stainless-lang", "x-stainless-package-version", "x-stainless-os",
    "x-stainless-arch", "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count",
    "x-stainless-timeout", "x-stainless-helper-method",
})
# Upstream response headers a caller may see; never set-cookie or hop-by-hop headers.
FORWARDED_RESPONSE_PREFIXES = ("x-request-id", "request-id", "openai-", "anthropic-", "x-ratelimit-", "retry-after")


def open_client() -> HttpClient:
    """No total limit (a stream may last minutes); connect and between-reads limits from settings
    (the pipeline passes them with each request too, so a changed setting applies at once). The TLS
    files are loaded here (a file that cannot be loaded stops the start, naming its setting); a
    facade that sets some of its own takes the rest from them."""
    return HttpClient(connect_timeout=settings.GATEWAY_CONNECT_TIMEOUT, read_timeout=settings.GATEWAY_READ_TIMEOUT,
                      max_connections=settings.GATEWAY_UPSTREAM_CONNECTIONS,
                      max_connections_per_origin=settings.GATEWAY_UPSTREAM_CONNECTIONS_PER_ORIGIN,
                      keepalive_seconds=settings.GATEWAY_UPSTREAM_KEEPALIVE_SECONDS,
                      dns_ttl_seconds=settings.GATEWAY_UPSTREAM_DNS_TTL_SECONDS,
                      max_response_bytes=settings.GATEWAY_MAX_RESPONSE_BYTES,
                      ca_bundle=settings.GATEWAY_UPSTREAM_CA_BUNDLE, client_cert=settings.GATEWAY_UPSTREAM_CLIENT_CERT,
                      client_key=settings.GATEWAY_UPSTREAM_CLIENT_KEY,
                      https_proxy=settings.GATEWAY_UPSTREAM_HTTPS_PROXY, http_proxy=settings.GATEWAY_UPSTREAM_HTTP_PROXY,
                      no_proxy=settings.GATEWAY_UPSTREAM_NO_PROXY)


def request_headers(caller_headers: dict[str, str], credential_headers: dict[str, str]) -> dict[str, str]:
    headers = {name: value for name, value in caller_headers.items() if name in FORWARDED_REQUEST_HEADERS}
    headers.update(credential_headers)
    return headers


_FORWARDED_RESPONSE_PREFIXES = tuple(prefix.encode() for prefix in FORWARDED_RESPONSE_PREFIXES)


def response_headers(raw_headers) -> list[tuple[bytes, bytes]]:
    """The upstream's headers a caller may see, from the answer's `raw_headers`: names in lower case,
    values as the upstream sent them (bytes, never decoded and re-encoded)."""
    return [(name.lower(), value) for name, value in raw_headers if name.lower().startswith(_FORWARDED_RESPONSE_PREFIXES)]
