"""TLS for upstream connections: the system's trust store, plus a private CA bundle and a client
certificate when configured (the gateway's own, or a facade's Transport), with the setting named
when a file cannot be loaded."""

import ssl
from functools import lru_cache

from gateway.http_client.errors import UpstreamSettingUnusable
from gateway.http_client.transport import Transport

# The settings tls_context() names when one of its files cannot be loaded.
GATEWAY_TLS_SETTINGS = ("GATEWAY_UPSTREAM_CA_BUNDLE", "GATEWAY_UPSTREAM_CLIENT_CERT", "GATEWAY_UPSTREAM_CLIENT_KEY")


def tls_context(ca_bundle: str = "", client_cert: str = "", client_key: str = "", *,
                settings: tuple[str, str, str] = GATEWAY_TLS_SETTINGS) -> ssl.SSLContext:
    """The client's TLS settings: the system's trust store, with the certificates of `ca_bundle` (a PEM
    file) ADDED to it, never replacing it (an upstream with a public certificate stays reachable
    when a private CA is configured for another); and `client_cert` (with `client_key`, or a PEM
    holding both) presented to upstreams that ask for one (mTLS). A file that cannot be loaded is
    UpstreamSettingUnusable, naming its setting (`settings`: the CA bundle's, the certificate's and
    the key's) and path: neither OpenSSL's message nor the OS's holds a file's contents."""
    context = ssl.create_default_context()
    ca_setting, cert_setting, key_setting = settings
    what = ""
    try:
        if ca_bundle:
            what = f"{ca_setting} ({ca_bundle})"
            context.load_verify_locations(cafile=ca_bundle)
        if client_cert:
            what = f"{cert_setting} ({client_cert})" + (f" with {key_setting} ({client_key})" if client_key else "")
            context.load_cert_chain(client_cert, client_key or None)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a path with a NUL byte, a ValueError
        reason = getattr(exc, "strerror", None) or exc
        raise UpstreamSettingUnusable(f"{what} could not be loaded: {reason}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


@lru_cache(maxsize=1)


def _default_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class TransportContexts:
    """The TLS contexts of facades' own files, one per distinct (CA bundle, certificate, key), built
    the first time a connection needs it and kept: equal files share one context."""

    __slots__ = ("client_files", "contexts")

    def __init__(self, ca_bundle: str, client_cert: str, client_key: str):
        self.client_files = (ca_bundle, client_cert, client_key)  # the client's: what a blank field takes
        self.contexts: dict[tuple[str, str, str], ssl.SSLContext] = {}

    def of(self, transport: Transport) -> ssl.SSLContext:
        """The context of a transport's files, each blank one taken from the client's (a certificate
        and its key go together)."""
        ca_bundle, client_cert, client_key = self.client_files
        files = (transport.ca_bundle or ca_bundle,
                 *((transport.client_cert, transport.client_key) if transport.client_cert else (client_cert, client_key)))
        context = self.contexts.get(files)
        if context is None:  # named as the facade's setting or the gateway's, whichever the file came from
            settings = ("the facade's upstream_ca_bundle" if transport.ca_bundle else GATEWAY_TLS_SETTINGS[0],
                        *(("the facade's upstream_client_cert", "the facade's upstream_client_key")
                          if transport.client_cert else GATEWAY_TLS_SETTINGS[1:]))
            context = self.contexts[files] = tls_context(*files, settings=settings)
        return context
