"""The way to an upstream, as settings: the egress proxy (its URL's rule, how it may be shown, the
Proxy-Authorization its credentials make, NO_PROXY), and a facade's own Transport (its proxy and
TLS files). Nothing here opens a connection: connect.py does, with what these say.

A proxy URL may carry credentials: no message, repr or log made here repeats them."""

import base64
import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class _Proxy:
    """An egress proxy: where it listens, and the Proxy-Authorization its URL's credentials make.
    Its repr and `name` leave the credentials out: they are in no message and no log."""

    __slots__ = ("host", "port", "authorization", "name")

    def __init__(self, host: str, port: int, authorization: str | None):
        self.host, self.port, self.authorization = host, port, authorization
        self.name = f"http://{host}:{port}"

    def __repr__(self) -> str:
        return f"_Proxy({self.name})"

    @classmethod
    def parse(cls, url: str) -> "_Proxy | None":
        if not url:
            return None
        parts = urlsplit(url if "://" in url else f"http://{url}")  # no scheme: http, as curl takes it
        if parts.scheme != "http" or not parts.hostname:
            # Named without the URL: it may carry credentials.
            raise ValueError(f"the upstream proxy must be an http:// URL with a host, not a {parts.scheme}:// one")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)


# A facade's upstream_proxy that sends its traffic straight to the upstream, whatever the gateway's proxy.
DIRECT = "none"


@dataclass(frozen=True, slots=True)


class Transport:
    """A facade's own way to its upstream; each blank field is the client's own setting. `proxy`:
    an http:// URL (with Basic credentials, if any) for both schemes, or DIRECT; the others: paths
    of PEM files (a CA bundle added to the system's trust store, a client certificate, its key
    when not in the certificate's file). Hashable: requests with equal transports share a pool."""

    proxy: str = ""
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca_bundle or self.client_cert)

    def __repr__(self) -> str:  # the proxy's credentials are in no repr, so in no log
        return (f"Transport(proxy={redact_proxy_url(self.proxy)!r}, ca_bundle={self.ca_bundle!r}, "
                f"client_cert={self.client_cert!r}, client_key={self.client_key!r})")


def redact_proxy_url(url: str) -> str:
    """A proxy URL as it may be shown: scheme, host and port, no credentials."""
    if not url or url == DIRECT:
        return url
    try:
        proxy = _Proxy.parse(url)
    except ValueError:
        return "(not an http:// proxy URL)"
    return proxy.name


def check_proxy_url(url: str) -> None:
    """The rule for a facade's upstream_proxy: http://[user:password@]host[:port] and nothing else
    (ValueError otherwise, with a message that never repeats the URL: it may carry credentials)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # its message may quote part of the URL
        parts, port = urlsplit("http://invalid"), -1
    if parts.scheme != "http" or not url.startswith("http://") or not parts.hostname:
        raise ValueError("An upstream proxy is an http:// URL with a host: http://[user:password@]host:port.")
    if port == -1 or parts.path not in ("", "/") or parts.query or parts.fragment or any(c in url for c in " \t\r\n"):
        raise ValueError("An upstream proxy URL is http://[user:password@]host:port with a numeric port and "
                         "nothing after it (no path, query or spaces).")


class _NoProxy:
    """NO_PROXY as curl reads it: `*` for every host; otherwise names, each matching itself and its
    sub-domains (a leading dot changes nothing), and IP addresses or CIDR ranges matching the
    addresses in them. Nothing is exempt by default, not even localhost: a proxy that must not see
    loopback traffic is told so here."""

    def __init__(self, value: str):
        entries = [entry.strip().lower() for entry in value.split(",") if entry.strip()]
        self.everything = "*" in entries
        self.names: list[str] = []
        self.networks: list = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.append(entry.lstrip("."))

    def matches(self, host: str) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(host == name or host.endswith("." + name) for name in self.names)
        return any(address in network for network in self.networks) or host in self.names
