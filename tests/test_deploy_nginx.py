"""deploy/nginx.conf, started in front of the gateway: what docs/operations.md's reverse-proxy rules promise.

Real processes on loopback: Debian's nginx serving the file (TLS with a throwaway certificate, the
listen port, the gateway's port and a short client_header_timeout substituted, nothing else),
the gateway under gunicorn on the test database, and an upstream that sends one event, pauses,
then sends the rest. The client connects from 127.0.0.2, so the address the gateway logs is the
client's, not nginx's (127.0.0.1).
"""

import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from tests.support.ci import cannot_run
from tests.support.servers import ROOT, Process, free_port, start_gateway, wait_for_http, wait_for_port

# django_db: so pytest-django creates the test database, which the module's gateway uses (the rows
# are made once for the module and flushed at its end; the tests themselves only talk HTTP).
pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only, pytest.mark.xdist_group("deploy_nginx"),
              pytest.mark.timeout(120)]

CONF = ROOT / "deploy" / "nginx.conf"
HEADER_TIMEOUT = 1.0  # seconds, in place of the file's 10s
UPSTREAM_PAUSE = 1.0  # seconds between the upstream's first event and the rest
CLIENT_ADDRESS = "127.0.0.2"
MODEL = "gpt-behind-nginx"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")  # sbin: not on every PATH
    if found:
        return found
    cannot_run("nginx is missing: install Debian's `nginx` package (`make test-tools` does, as root; "
               "else `sudo apt-get install -y nginx`)")


# --- the world: an upstream, the gateway, nginx --------------------------------------------------------


class SlowStreamUpstream(BaseHTTPRequestHandler):
    """An OpenAI chat stream: the first event, a pause, then the rest (chunked, like a model's)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        base = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini"}
        self.chunk(event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"},
                                                "finish_reason": None}]}))
        time.sleep(UPSTREAM_PAUSE)
        self.chunk(event({**base, "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}]})
                   + event({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                                             "total_tokens": 7}})
                   + b"data: [DONE]\n\n")
        self.chunk(b"")

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, *args):
        pass


def event(data: dict) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def render(text: str, **values) -> str:
    """deploy/nginx.conf with only the host-specific lines replaced; each must be found exactly once,
    so the test fails loudly when the file changes shape instead of testing something else."""
    replacements = [
        (r"listen 443 ssl;", f"listen 127.0.0.1:{values['port']} ssl;"),
        (r"\n *listen \[::\]:443 ssl;", ""),
        (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{values['gateway_port']};"),
        (r"ssl_certificate /etc/ssl/codevector/fullchain\.pem;", f"ssl_certificate {values['cert']};"),
        (r"ssl_certificate_key /etc/ssl/codevector/privkey\.pem;", f"ssl_certificate_key {values['key']};"),
        (r"client_header_timeout 10s;", f"client_header_timeout {values['header_timeout']};"),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"deploy/nginx.conf: expected one {pattern!r}, found {count}"
    return text


def main_config(workdir: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf would be around the site, reduced to the paths of this run."""
    return f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {workdir}/codevector.conf;
}}
"""


def database_url() -> str:
    settings_dict = connection.settings_dict
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    return (f"postgres://{settings_dict['USER']}{password}@{settings_dict['HOST'] or '127.0.0.1'}:"
            f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}")


class World:
    def __init__(self, port: int, key: str, gateway: Process, nginx: Process, workdir: Path, cert: Path):
        self.port, self.key, self.gateway, self.nginx, self.workdir, self.cert = port, key, gateway, nginx, workdir, cert

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def connect(self) -> ssl.SSLSocket:
        """A TLS connection to nginx from the client's address."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(CLIENT_ADDRESS, 0))
        return self.tls().wrap_socket(raw, server_hostname="localhost")

    def https(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.tls(),
                                           source_address=(CLIENT_ADDRESS, 0))

    def gateway_requests(self) -> list[dict]:
        """The gateway's log lines for /v1/ requests (Call.log), parsed."""
        marker = ' codevector.gateway {"event":"request"'
        return [json.loads(line[line.index("{"):]) for line in self.gateway.output().splitlines() if marker in line]

    def error_log(self) -> str:
        return (self.workdir / "error.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, tmp_path_factory):
    nginx = nginx_binary()
    workdir = tmp_path_factory.mktemp("nginx")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowStreamUpstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    processes = []
    with django_db_blocker.unblock():
        try:
            from django.contrib.auth.models import User

            from gateway.models import ApiKey, ModelFacade

            user = User.objects.create_user("carol")
            ModelFacade.objects.create(name=MODEL, provider="openai", upstream_model="gpt-4o-mini",
                                       base_url=f"http://127.0.0.1:{upstream.server_address[1]}/v1",
                                       input_price_micros=150_000, output_price_micros=600_000)
            key = ApiKey.objects.create_key(user)[1]
            gateway, gateway_url = start_gateway(database_url(), workdir, env={"FORWARDED_ALLOW_IPS": "127.0.0.1"})
            processes.append(gateway)
            wait_for_http(f"{gateway_url}/readyz")
            cert, tls_key = self_signed_certificate(workdir)
            port = free_port()
            (workdir / "codevector.conf").write_text(render(
                CONF.read_text(), port=port, gateway_port=gateway_url.rsplit(":", 1)[1], cert=cert, key=tls_key,
                header_timeout=f"{int(HEADER_TIMEOUT * 1000)}ms"))
            (workdir / "nginx.conf").write_text(main_config(workdir))
            server = Process([nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c",
                              str(workdir / "nginx.conf"), "-g", "daemon off;"], {**os.environ}, workdir / "nginx.out")
            processes.append(server)
            try:
                wait_for_port(port, seconds=10)
            except OSError:
                pytest.fail(f"nginx did not start:\n{server.output()}\n{(workdir / 'error.log').read_text()}")
            yield World(port, key, gateway, server, workdir, cert)
        finally:
            for process in reversed(processes):
                process.stop()
            upstream.shutdown()
            upstream.server_close()
            # Module-scoped rows were committed: leave the database as a transactional test does.
            call_command("flush", verbosity=0, interactive=False)


# --- the checks ----------------------------------------------------------------------------------------


def test_a_client_trickling_its_headers_is_cut_off_at_the_header_timeout(world):
    sock = world.connect()
    started = time.monotonic()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    sent = 0
    sock.settimeout(0.2)
    try:
        while time.monotonic() - started < HEADER_TIMEOUT + 3:
            sock.sendall(b"a")  # a byte every 0.2 s: a timer reset by each read would never fire
            sent += 1
            try:
                if sock.recv(1024) == b"":
                    break
            except (TimeoutError, socket.timeout):
                continue
    except (ConnectionError, ssl.SSLError):
        pass
    cut_after = time.monotonic() - started
    sock.close()
    assert sent >= 3
    assert HEADER_TIMEOUT - 0.3 < cut_after < HEADER_TIMEOUT + 1.5, f"cut after {cut_after:.2f}s"
    assert "client timed out" in world.error_log()
    assert not [line for line in world.gateway_requests() if line["method"] == "POST" and line["status"] != 200]


def test_an_8_mb_header_is_refused_by_nginx_and_never_reaches_the_gateway(world):
    sock = world.connect()
    head = b"GET /v1/oversized-probe HTTP/1.1\r\nHost: localhost\r\nX-Big: "

    def send_all():
        try:
            sock.sendall(head + b"a" * (8 * 1024 * 1024) + b"\r\n\r\n")
        except (ConnectionError, ssl.SSLError, OSError):
            pass  # nginx answered and closed before taking it all: expected

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    answer = b""
    try:
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    except (ConnectionError, ssl.SSLError):
        pass
    sender.join(10)
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    assert status in (400, 431, 494), f"nginx answered {answer[:200]!r}"
    assert not [line for line in world.gateway_requests() if line["path"] == "/v1/oversized-probe"]


def test_a_stream_reaches_the_client_event_by_event(world):
    conn = world.https()
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    conn.connect()
    started = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"authorization": f"Bearer {world.key}", "content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    events = []
    while line := response.readline():
        if line.startswith(b"data: "):
            events.append((time.monotonic() - started, line[6:].strip()))
    conn.close()
    first_at, first = events[0]
    last_at, last = events[-1]
    assert json.loads(first)["choices"][0]["delta"]["content"] == "Hello"
    assert last == b"[DONE]"
    # Buffered, both would arrive together once the upstream finished.
    assert first_at < UPSTREAM_PAUSE / 2, f"first event after {first_at:.2f}s, last after {last_at:.2f}s"
    assert last_at - first_at > UPSTREAM_PAUSE * 0.8, f"first event after {first_at:.2f}s, last after {last_at:.2f}s"


def test_the_gateway_logs_the_clients_address_not_one_the_client_claims(world):
    conn = world.https()
    conn.request("GET", "/v1/models", headers={"authorization": f"Bearer {world.key}",
                                               "x-forwarded-for": "203.0.113.9", "x-real-ip": "203.0.113.9"})
    assert conn.getresponse().status == 200
    conn.close()
    deadline = time.monotonic() + 5
    while not (lines := [line for line in world.gateway_requests() if line["path"] == "/v1/models"]):
        assert time.monotonic() < deadline, "the gateway logged no /v1/models request"
        time.sleep(0.05)
    assert [line["client"] for line in lines] == [CLIENT_ADDRESS]
