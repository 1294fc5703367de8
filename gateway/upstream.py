"""The one aiohttp ClientSession each gateway process shares for upstream traffic.

aiohttp, not httpx: httpx's pool collapses with hundreds of requests in flight (measured here;
see the gateway issue). The connection limit is raised well past aiohttp's default of 100.
"""

import functools

import aiohttp
from django.conf import settings

# Headers a caller may pass upstream; everything else (cookies, the caller's credentials,
# x-forwarded-*, hop-by-hop headers) stays behind.
FORWARDED_REQUEST_HEADERS = frozenset({
    "content-type", "accept", "anthropic-version", "anthropic-beta", "openai-beta", "openai-organization",
    "openai-project", "user-agent", "x-stainless-lang", "x-stainless-package-version", "x-stainless-os",
    "x-stainless-arch", "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count",
    "x-stainless-timeout", "x-stainless-helper-method",
})
# Upstream response headers a caller may see; never set-cookie or hop-by-hop headers.
FORWARDED_RESPONSE_PREFIXES = ("x-request-id", "request-id", "openai-", "anthropic-", "x-ratelimit-", "retry-after")


def timeout() -> aiohttp.ClientTimeout:
    """No total limit (a stream may last minutes); connect and between-reads limits from settings."""
    return _timeout(settings.GATEWAY_CONNECT_TIMEOUT, settings.GATEWAY_READ_TIMEOUT)


@functools.lru_cache(maxsize=8)
def _timeout(connect: float, read: float) -> aiohttp.ClientTimeout:  # one object per request path, not per request
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


def open_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=settings.GATEWAY_UPSTREAM_CONNECTIONS, limit_per_host=0,
                                     ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, timeout=timeout(), auto_decompress=True,
                                 skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar())


def request_headers(caller_headers: dict[str, str], credential_headers: dict[str, str]) -> dict[str, str]:
    headers = {name: value for name, value in caller_headers.items() if name in FORWARDED_REQUEST_HEADERS}
    headers.update(credential_headers)
    return headers


_FORWARDED_RESPONSE_PREFIXES = tuple(prefix.encode() for prefix in FORWARDED_RESPONSE_PREFIXES)


def response_headers(raw_headers) -> list[tuple[bytes, bytes]]:
    """The upstream's headers a caller may see, from aiohttp's `raw_headers`: names in lower case,
    values as the upstream sent them (bytes, never decoded and re-encoded)."""
    return [(name.lower(), value) for name, value in raw_headers if name.lower().startswith(_FORWARDED_RESPONSE_PREFIXES)]
