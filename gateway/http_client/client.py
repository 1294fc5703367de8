"""HttpClient, and what one request does: the request head written as one f-string, a slot taken
(on the free path by reading two counters), an idle connection of the request's pool reused or a
new one made, the head and body written, and the Response returned once the answer's head is in.
A request is never sent twice: once a byte of it may have reached the kernel, a connection that
fails is the caller's error; only a write refused at its first byte (the pooled connection was
reset while idle) is sent again, once, on a fresh connection."""

import ssl
from functools import lru_cache
from urllib.parse import urlsplit

from gateway.http_client.connect import Dialer
from gateway.http_client.errors import UpstreamDropped
from gateway.http_client.pool import Pools
from gateway.http_client.response import Response
from gateway.http_client.transport import Transport


@lru_cache(maxsize=512)


def _target(url: str) -> tuple[tuple[bool, str, int], str, str]:
    """(origin: (https, host, port), Host header, request target) of a URL, worked out once per URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    https = parts.scheme == "https"
    default = 443 if https else 80
    port = parts.port or default
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (https, parts.hostname, port), host if port == default else f"{host}:{port}", target


def _head(target: str, host: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {length}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # Every line break is one this function wrote: a name or value bringing its own would split the head.
    breaks = len(headers) + 4  # the request line, host, content-length, each header, the blank line
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("a header name or value of the upstream request contains a line break")
    return head.encode("latin-1")


class HttpClient(Pools, Dialer):
    """POSTs to upstreams over keep-alive connections: its slots and idle connections are Pools',
    how it makes connections is Dialer's; post() is the one request it sends."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, max_connections: int = 2000,
                 max_connections_per_origin: int = 1000, keepalive_seconds: float = 4.0,
                 max_response_bytes: int = 64 * 1024 * 1024, dns_ttl_seconds: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, https_proxy: str = "", http_proxy: str = "",
                 no_proxy: str = "", ca_bundle: str = "", client_cert: str = "", client_key: str = ""):
        """`ca_bundle`, `client_cert` and `client_key` are the files of `ssl_context` (which is built
        from them when not given): a Transport that sets some of its own takes the rest from them."""
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_response_bytes = max_response_bytes
        Pools.__init__(self, max_connections, max_connections_per_origin, keepalive_seconds)
        Dialer.__init__(self, dns_ttl_seconds=dns_ttl_seconds, ssl_context=ssl_context, https_proxy=https_proxy,
                        http_proxy=http_proxy, no_proxy=no_proxy, ca_bundle=ca_bundle, client_cert=client_cert,
                        client_key=client_key)

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, connect_timeout: float | None = None,
                   read_timeout: float | None = None, transport: Transport | None = None) -> Response:
        """Send a POST and return once the answer's status and headers are in. The timeouts, when
        given, replace the client's for this request (the gateway reads them from its settings);
        `transport`, when given, is the facade's own proxy and TLS files (see Transport)."""
        connect_timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        origin, host, target = _target(url)
        if transport is None:
            pool = origin
            proxy = self._routes[origin] if origin in self._routes else self._route(origin)
        else:
            pool = (origin, transport)
            proxy = self._routes[pool] if pool in self._routes else self._route_own(pool, transport)
        if proxy is not None and not origin[0]:  # plain http through a proxy: the absolute form, and its credentials
            target = f"http://{host}{target}"
            if proxy.authorization:
                headers = {**headers, "proxy-authorization": proxy.authorization}
        head = _head(target, host, len(body), headers)
        loop = self._loop or self._bind()
        origin_slots = self._origin_slots.get(origin) or self._add_origin(origin)
        total = self._slots
        if origin_slots.free and total.free and not origin_slots.waiters and not total.waiters:
            origin_slots.free -= 1
            total.free -= 1
        else:
            started = loop.time()
            await self._wait_for_slots(origin, origin_slots, connect_timeout)
            connect_timeout -= loop.time() - started
        conn = None
        try:
            conn = self._idle_connection(pool) or await self._connect(origin, pool, connect_timeout)
            conn.in_use = True
            conn.begin()
            wire = conn.transport
            wire.writelines((head, body))
            if wire.is_closing():
                # Both loops' transports send at once when nothing is queued, and close at once when
                # that send fails: a failed first send wrote nothing, so the request may go again.
                conn.abort()
                conn = await self._connect(origin, pool, connect_timeout)
                conn.transport.writelines((head, body))
                if conn.transport.is_closing():
                    raise UpstreamDropped("the connection to the upstream failed before the request could be sent")
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(read_timeout)
            return Response(conn, self, read_timeout)
        except BaseException:
            if conn is not None:
                conn.abort()
            self._free_slots(origin)
            raise

    async def __aenter__(self) -> "HttpClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
