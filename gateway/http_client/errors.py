"""How the upstream client fails: one exception per way, under UpstreamError. The pipeline turns
each into the caller's answer (a 502, a 504, a 413...), so which class is raised is the contract.

The builtin `TimeoutError` (not one of these) is what a read raises when no byte came for the read
timeout while the head or a piece of the body was awaited."""


class UpstreamError(Exception):
    """Any failure talking to the upstream."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be made: refused, DNS, TLS handshake."""


class UpstreamConnectTimeout(UpstreamUnreachable, TimeoutError):
    """Connecting (slot wait, DNS, TCP and TLS) took longer than the client's connect timeout."""


class UpstreamProxyRefused(UpstreamUnreachable):
    """The egress proxy answered CONNECT with something other than 200 (its status is in the message)."""


class UpstreamSettingUnusable(UpstreamUnreachable):
    """A facade's (or the gateway's) CA bundle, client certificate or key cannot be loaded, or its
    proxy URL cannot be used: the message names the setting and the path, never a file's contents
    or the proxy's credentials."""


class UpstreamPoolFull(UpstreamConnectTimeout):
    """The connect timeout passed while every connection slot (the client's, or the origin's) was in use."""


class UpstreamDropped(UpstreamError):
    """The connection ended, or the answer stopped being HTTP, before the answer's end."""


class UpstreamTooLarge(UpstreamError):
    """A whole answer read with `read`, or what an encoded answer decodes to, is larger than the
    client's `max_response_bytes`."""


class UpstreamBadEncoding(UpstreamError):
    """The answer's Content-Encoding is not one the client decodes, or its body does not decode."""
