"""The gateway's upstream client: HTTP/1.1 POSTs over keep-alive connections, one pool per origin.

Why not aiohttp's ClientSession, which carried this traffic first: per request it builds a
ClientRequest (a dozen `update_*` steps), merges header multidicts, parses the URL, arms several
timers and wraps the body in a payload object, as much CPU per request as the gateway's own steps
and the ledger together (the figures: docs/performance.md, bench/gateway.py). A gateway sends one
kind of request — a POST of a body already in memory, to a few origins — so this client does only
that: the request head is one f-string, the answer is parsed by httptools, and a connection goes
back to its pool once its answer has been read to the end.

What it does, and how it fails (the pipeline turns each error into the caller's answer), and where:
- http and https (the standard library's TLS, the system's trust store by default), the URL's path
  and query as given, Host and Content-Length set here, no Accept-Encoding asked (an answer that
  is gzip- or deflate-encoded anyway is decoded): client.py sends, response.py reads;
- answers with Content-Length, chunked, or delimited by the connection's end; `Connection: close`,
  answers read only in part, and connections that received anything after their answer's end are
  never reused; a pooled connection is reused only if it is still live (its socket has nothing to
  read: no EOF, no stray bytes), and closed once idle `keepalive_seconds` by a timer
  (connection.py, pool.py);
- at most `max_connections` in use, and `max_connections_per_origin` to one origin (so one stuck
  upstream cannot take every slot); waiting for a slot counts against the connect timeout (pool.py);
- names resolved by the loop's getaddrinfo and kept `dns_ttl_seconds`; several addresses are tried
  as RFC 8305 says (families interleaved, the next attempt started every HAPPY_EYEBALLS_DELAY or
  when one fails) (connect.py, happy_eyeballs.py);
- `UpstreamUnreachable` when no connection could be made (refused, DNS, TLS), its subclass
  `UpstreamConnectTimeout` past `connect_timeout` (slot wait, DNS, TCP and TLS together), and its
  subclass `UpstreamPoolFull` when the time went waiting for a slot;
  `UpstreamDropped` when the connection ends (or is reset), or the answer stops being HTTP, before
  its end; `UpstreamBadEncoding` for a Content-Encoding other than gzip or deflate (raised by
  `post`, before any byte of the body) or an encoded body that does not decode; `UpstreamTooLarge`
  for a whole answer above `max_response_bytes`, or an encoded one that decodes to more;
  the builtin `TimeoutError` when no byte came for `read_timeout` seconds while the head or a
  piece of the body was awaited (a stream may last for minutes as long as bytes keep coming)
  (errors.py);
- a request is never sent twice: once a byte of it may have reached the kernel, a connection that
  fails is the caller's error. Only a write refused at its first byte (the pooled connection was
  reset while idle) is sent again, once, on a fresh connection (client.py);
- an egress proxy (`https_proxy` for https origins, tunnelled with CONNECT; `http_proxy` for http
  origins, sent the request in absolute form), with Basic credentials from the proxy URL that appear
  in no message; `no_proxy` as curl reads it (loopback goes through the proxy unless named there);
  `UpstreamProxyRefused` when the proxy answers CONNECT with anything but 200 (transport.py,
  connect.py);
- `tls_context()`: the system's trust store plus a private CA bundle, and a client certificate (tls.py);
- a `Transport` per request (a facade's own proxy, CA bundle, client certificate and key): its
  connections are pooled apart, keyed by origin and transport, so none made with one facade's TLS
  or proxy settings carries another's requests; its TLS context is built once per distinct
  (CA bundle, certificate, key) and kept; `UpstreamSettingUnusable` when one of its files cannot be
  loaded or its proxy URL is not usable (the message names the setting, never a file's contents or
  the proxy's credentials). Requests without one are pooled by origin alone.
"""

from gateway.http_client.client import HttpClient
from gateway.http_client.errors import (UpstreamBadEncoding, UpstreamConnectTimeout, UpstreamDropped, UpstreamError,
                                        UpstreamPoolFull, UpstreamProxyRefused, UpstreamSettingUnusable,
                                        UpstreamTooLarge, UpstreamUnreachable)
from gateway.http_client.response import Response
from gateway.http_client.tls import tls_context
from gateway.http_client.transport import DIRECT, Transport, check_proxy_url, redact_proxy_url

__all__ = [
    "DIRECT", "HttpClient", "Response", "Transport", "UpstreamBadEncoding", "UpstreamConnectTimeout",
    "UpstreamDropped", "UpstreamError", "UpstreamPoolFull", "UpstreamProxyRefused", "UpstreamSettingUnusable",
    "UpstreamTooLarge", "UpstreamUnreachable", "check_proxy_url", "redact_proxy_url", "tls_context",
]
