"""How a new connection to an origin is made: the way (straight, or through the egress proxy that
the origin's scheme, NO_PROXY or the facade's Transport names), the name resolved and kept
`dns_ttl_seconds`, the race between its addresses (happy_eyeballs.py), the CONNECT tunnel through a
proxy for https, and TLS. Every failure is an UpstreamUnreachable, or an UpstreamConnectTimeout
past the connect timeout (DNS, TCP, CONNECT and TLS together)."""

import asyncio
import socket
import ssl

from gateway.http_client.connection import _Connection
from gateway.http_client.errors import (UpstreamConnectTimeout, UpstreamProxyRefused, UpstreamSettingUnusable,
                                        UpstreamUnreachable)
from gateway.http_client.happy_eyeballs import _happy_eyeballs, _interleave
from gateway.http_client.tls import TransportContexts, _default_context, tls_context
from gateway.http_client.transport import DIRECT, Transport, _NoProxy, _Proxy


class Dialer:
    """How HttpClient makes connections. A base class of HttpClient rather than an object it holds:
    post() reads the route decided for a pool key itself, with no call in between; the connections
    made join the client's pools (Pools: `_open`, `_loop`)."""

    def __init__(self, *, dns_ttl_seconds: float, ssl_context: ssl.SSLContext | None, https_proxy: str,
                 http_proxy: str, no_proxy: str, ca_bundle: str, client_cert: str, client_key: str):
        self.dns_ttl_seconds = dns_ttl_seconds
        if ssl_context is None and (ca_bundle or client_cert):
            ssl_context = tls_context(ca_bundle, client_cert, client_key)
        self.ssl_context = ssl_context
        self._contexts = TransportContexts(ca_bundle, client_cert, client_key)
        self._proxies = {True: _Proxy.parse(https_proxy), False: _Proxy.parse(http_proxy)}  # by https
        self._no_proxy = _NoProxy(no_proxy)
        self._routes: dict[tuple, _Proxy | None] = {}  # pool key: its proxy (None: direct), decided once
        self._dns: dict[tuple[str, int], tuple[float, list]] = {}  # (host, port): (expiry, addresses)

    def _route(self, origin) -> _Proxy | None:
        https, host, _ = origin
        proxy = self._proxies[https]
        if proxy is not None and self._no_proxy.matches(host):
            proxy = None
        self._routes[origin] = proxy
        return proxy

    def _route_own(self, pool, transport: Transport) -> _Proxy | None:
        """A transport's proxy: its own for both schemes (NO_PROXY does not apply: the facade named
        it), none at all for "none", or the client's as for any request when it names none."""
        origin, _ = pool
        if not transport.proxy:
            proxy = self._routes[origin] if origin in self._routes else self._route(origin)
        elif transport.proxy == DIRECT:
            proxy = None
        else:
            try:
                proxy = _Proxy.parse(transport.proxy)
            except ValueError as exc:
                raise UpstreamSettingUnusable(f"the facade's upstream_proxy cannot be used: {exc}") from None
        self._routes[pool] = proxy
        return proxy

    async def _connect(self, origin, pool, timeout: float) -> _Connection:
        https, host, port = origin
        loop = self._loop
        context = None
        if https:
            context = self.ssl_context or _default_context()
            if pool is not origin and pool[1].tls:
                context = self._contexts.of(pool[1])
        proxy = self._routes[pool]
        try:
            async with asyncio.timeout(timeout):
                if proxy is None:
                    sock = await _happy_eyeballs(loop, await self._resolve(host, port))
                else:
                    sock = await _happy_eyeballs(loop, await self._resolve(proxy.host, proxy.port))
                    if https:
                        await _tunnel(loop, sock, host, port, proxy)
                # create_connection(sock=...): uvloop's has no happy_eyeballs_delay, so the race is run above.
                _, conn = await loop.create_connection(lambda: _Connection(origin, pool, self._open), sock=sock,
                                                       ssl=context, server_hostname=host if https else None)
        except TimeoutError:
            raise UpstreamConnectTimeout(f"no connection to {host}:{port}{_via(proxy)} within {timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror), TLS (ssl.SSLError)
            raise UpstreamUnreachable(f"no connection to {host}:{port}{_via(proxy)} ({exc})") from exc
        return conn

    async def _resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """(family, socket address) for each address of `host`, in the order to try them."""
        key = (host, port)
        now = self._loop.time()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = _literal(host, port) or _interleave(await self._lookup(host, port))
        if not addresses:
            raise socket.gaierror(f"{host} has no address")
        if len(self._dns) >= 1024:  # names come from facades, a short list; this only bounds a mistake
            self._dns.clear()
        self._dns[key] = (now + self.dns_ttl_seconds, addresses)
        return addresses

    async def _lookup(self, host: str, port: int) -> list[tuple[int, tuple]]:
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, address) for family, _, _, _, address in infos]


def _via(proxy: _Proxy | None) -> str:
    return "" if proxy is None else f" through the proxy {proxy.name}"


async def _tunnel(loop, sock: socket.socket, host: str, port: int, proxy: _Proxy) -> None:
    """CONNECT through `proxy` on the connected socket `sock`; TLS to the origin starts once it returns."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
    if proxy.authorization:
        request += f"proxy-authorization: {proxy.authorization}\r\n"
    await loop.sock_sendall(sock, (request + "\r\n").encode("latin-1"))
    answer = b""
    while b"\r\n\r\n" not in answer:
        more = await loop.sock_recv(sock, 4096)
        if not more or len(answer) > 65536:
            raise UpstreamProxyRefused(f"the proxy {proxy.name} did not answer CONNECT {authority}")
        answer += more
    head, _, rest = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")[:200]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or parts[1] != "200":
        raise UpstreamProxyRefused(f"the proxy {proxy.name} refused CONNECT {authority}: {status_line}")
    if rest:  # the origin's TLS has not started: nothing may follow the proxy's answer yet
        raise UpstreamProxyRefused(f"the proxy {proxy.name} sent bytes after its answer to CONNECT {authority}")


def _literal(host: str, port: int) -> list[tuple[int, tuple]] | None:
    """An IP address needs no lookup (and no trip to the resolver's thread)."""
    for family, address in ((socket.AF_INET, (host, port)), (socket.AF_INET6, (host, port, 0, 0))):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, address)]
    return None
