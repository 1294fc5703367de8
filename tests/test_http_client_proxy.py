"""gateway.http_client behind an egress proxy (Debian's tinyproxy, started here on loopback with its
own config and log), and TLS with a private CA and client certificates (a test CA made with
`cryptography`). Under CI=true a missing tinyproxy fails these tests: it must be installed
(apt-get install -y tinyproxy)."""

import base64
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from gateway.http_client import (
    UpstreamError,
    UpstreamProxyRefused,
    UpstreamUnreachable,
    tls_context,
)
from gateway.http_client.transport import _NoProxy, _Proxy
from tests.support.ci import cannot_run
from tests.test_http_client import Upstream, answer, answer_body, answering, client, scenario, within

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

USER, PASSWORD = "gateway", "pr0xy-s3cret"


# --- a test CA, a server certificate and a client certificate ---


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)

    def write(name: str, cert, key) -> tuple[str, str]:
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(cert_path), str(key_path)

    def issue(subject: str, issuer_name, issuer_key, *extensions):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key or key, hashes.SHA256()), key

    ca_cert, ca_key = issue("CodeVector test CA", None, None, (x509.BasicConstraints(ca=True, path_length=0), True))
    server_cert, server_key = issue(
        "localhost", ca_cert.subject, ca_key,
        (x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
         False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    client_cert, client_key = issue("gateway", ca_cert.subject, ca_key,
                                    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False))
    ca_path, _ = write("ca", ca_cert, ca_key)
    return {"ca": ca_path, "server": write("server", server_cert, server_key),
            "client": write("client", client_cert, client_key)}


def server_context(pki, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*pki["server"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=pki["ca"])
    return context


# --- tinyproxy ---


class Tinyproxy:
    def __init__(self, port: int, log: str, process: subprocess.Popen):
        self.port, self.log_path, self.process = port, log, process

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()


@pytest.fixture
def tinyproxy(tmp_path):
    binary = shutil.which("tinyproxy")
    if binary is None:
        cannot_run("tinyproxy, which the proxy tests need (apt-get install -y tinyproxy)")
    log = tmp_path / "tinyproxy.log"
    for _ in range(3):  # the free port found here may be taken by another process before tinyproxy binds it
        port, process = start_tinyproxy(binary, tmp_path, log)
        if process is not None:
            break
    else:
        pytest.fail(f"tinyproxy did not start (see {log})")
    try:
        yield Tinyproxy(port, str(log), process)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_tinyproxy(binary: str, folder, log) -> tuple[int, subprocess.Popen | None]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "tinyproxy.conf"
    config.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\nLogLevel Info\n'
                      f"MaxClients 50\nAllow 127.0.0.1\nBasicAuth {USER} {PASSWORD}\n")
    process = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        if "Accepting connections" in (log.read_text(errors="replace") if log.exists() else ""):
            return port, process
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    return port, None


def assert_no_credentials(text: str) -> None:
    assert PASSWORD not in text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text


# --- through the proxy ---


@scenario
async def test_https_goes_through_the_proxy_with_connect_and_a_private_ca(pki, tinyproxy):
    reply = answer(b'{"via":"proxy"}', "Content-Type: application/json")
    async with Upstream(answering(reply), ssl_context=server_context(pki)) as upstream:
        async with client(ssl_context=tls_context(ca_bundle=pki["ca"]), https_proxy=tinyproxy.url()) as http:
            for _ in range(2):
                assert await answer_body(http, upstream.url(scheme="https"), b"{}") == b'{"via":"proxy"}'
            assert upstream.connections == 1  # the tunnel is kept alive like any connection
    log = tinyproxy.log()
    assert f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1" in log
    assert_no_credentials(log)
    [request, _] = upstream.requests
    assert request.values(b"proxy-authorization") == []  # inside the tunnel: the proxy's header is not sent


@scenario
async def test_http_goes_through_the_proxy_in_absolute_form(tinyproxy):
    async with Upstream(answering(answer(b"plain via proxy"))) as upstream:
        async with client(http_proxy=tinyproxy.url(), https_proxy="") as http:
            assert await answer_body(http, upstream.url(), b"body") == b"plain via proxy"
    log = tinyproxy.log()
    assert f"POST http://127.0.0.1:{upstream.port}/v1/x?api-version=1 HTTP/1.1" in log
    assert_no_credentials(log)
    [request] = upstream.requests
    assert request.line == b"POST /v1/x?api-version=1 HTTP/1.1"
    assert request.body == b"body"


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*", "localhost,127.0.0.1"])
@scenario
async def test_no_proxy_naming_the_host_bypasses_the_proxy(pki, tinyproxy, no_proxy):
    async with Upstream(answering(answer(b"direct")), ssl_context=server_context(pki)) as upstream:
        async with client(ssl_context=tls_context(ca_bundle=pki["ca"]), https_proxy=tinyproxy.url(),
                          no_proxy=no_proxy) as http:
            assert await answer_body(http, upstream.url(scheme="https")) == b"direct"
    assert "CONNECT 127.0.0.1" not in tinyproxy.log()


@scenario
async def test_loopback_goes_through_the_proxy_unless_no_proxy_names_it(pki, tinyproxy):
    async with Upstream(answering(answer(b"proxied")), ssl_context=server_context(pki)) as upstream:
        async with client(ssl_context=tls_context(ca_bundle=pki["ca"]), https_proxy=tinyproxy.url(),
                          no_proxy="localhost,example.com") as http:  # names, but not this address
            assert await answer_body(http, upstream.url(scheme="https")) == b"proxied"
    assert f"CONNECT 127.0.0.1:{upstream.port}" in tinyproxy.log()


@scenario
async def test_a_proxy_that_refuses_connect_is_unreachable_with_its_status_and_no_credentials(pki, tinyproxy):
    async with Upstream(answering(answer()), ssl_context=server_context(pki)) as upstream:
        wrong = tinyproxy.url(password="not-the-" + PASSWORD)
        async with client(ssl_context=tls_context(ca_bundle=pki["ca"]), https_proxy=wrong) as http:
            with pytest.raises(UpstreamProxyRefused) as caught:
                await within(http.post(upstream.url(scheme="https"), b"", {}))
            assert isinstance(caught.value, UpstreamUnreachable)
            assert "401 Unauthorized" in str(caught.value)  # tinyproxy's answer to CONNECT with wrong credentials
            assert f"http://127.0.0.1:{tinyproxy.port}" in str(caught.value)
            assert "not-the-" not in str(caught.value) and USER not in str(caught.value)
            assert_no_credentials(repr(caught.value))
            assert upstream.connections == 0
    assert_no_credentials(tinyproxy.log())


@scenario
async def test_an_unreachable_proxy_is_named_without_its_credentials():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client(https_proxy=f"http://{USER}:{PASSWORD}@127.0.0.1:{port}") as http:
        with pytest.raises(UpstreamUnreachable) as caught:
            await within(http.post("https://api.example.com/v1/x", b"", {}))
        assert f"through the proxy http://127.0.0.1:{port}" in str(caught.value)
        assert_no_credentials(str(caught.value))


# --- mTLS ---


@scenario
async def test_an_mtls_upstream_refuses_the_client_without_a_certificate_and_accepts_it_with_one(pki):
    async with Upstream(answering(answer(b"mutual")), ssl_context=server_context(pki, True)) as upstream:
        async with client(ssl_context=tls_context(ca_bundle=pki["ca"])) as http:
            with pytest.raises(UpstreamError):
                response = await within(http.post(upstream.url(scheme="https"), b"", {}))
                await within(response.read())
            assert upstream.requests == []
        with_cert = tls_context(ca_bundle=pki["ca"], client_cert=pki["client"][0], client_key=pki["client"][1])
        async with client(ssl_context=with_cert) as http:
            assert await answer_body(http, upstream.url(scheme="https")) == b"mutual"
            assert len(upstream.requests) == 1


@scenario
async def test_without_the_ca_bundle_the_private_certificate_is_not_trusted(pki):
    async with Upstream(answering(answer()), ssl_context=server_context(pki)) as upstream:
        async with client(ssl_context=tls_context()) as http:
            with pytest.raises(UpstreamUnreachable):
                await within(http.post(upstream.url(scheme="https"), b"", {}))


def test_the_ca_bundle_is_added_to_the_system_trust_store(pki):
    default = ssl.create_default_context()
    context = tls_context(ca_bundle=pki["ca"])
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # Certificates loaded from a file are counted; the system's come from the same default paths.
    assert context.cert_store_stats()["x509_ca"] == default.cert_store_stats()["x509_ca"] + 1


# --- the rules, without a network ---


@pytest.mark.parametrize("value, host, matches", [
    ("", "127.0.0.1", False),
    ("localhost", "127.0.0.1", False),  # a name does not match an address, as in curl
    ("localhost", "localhost", True),
    ("example.com", "api.example.com", True),
    (".example.com", "api.example.com", True),
    ("example.com", "notexample.com", False),
    ("EXAMPLE.com", "Api.Example.COM.", True),
    ("10.0.0.0/8, 192.168.1.5", "10.1.2.3", True),
    ("10.0.0.0/8, 192.168.1.5", "192.168.1.5", True),
    ("10.0.0.0/8, 192.168.1.5", "192.168.1.6", False),
    ("[::1]", "::1", True),
    ("*", "anything.example", True),
])
def test_no_proxy_reads_as_curl_does(value, host, matches):
    assert _NoProxy(value).matches(host) is matches


def test_a_proxy_url_gives_its_address_and_basic_credentials_but_never_shows_them():
    proxy = _Proxy.parse("http://us%40er:p%3Ass@proxy.internal:3128")
    assert (proxy.host, proxy.port) == ("proxy.internal", 3128)
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert "p:ss" not in repr(proxy) and "us@er" not in repr(proxy)
    assert _Proxy.parse("proxy.internal:8080").port == 8080  # no scheme: http
    assert _Proxy.parse("").__class__ is type(None)
    with pytest.raises(ValueError) as caught:
        _Proxy.parse("socks5://user:hidden@proxy:1080")
    assert "hidden" not in str(caught.value)
