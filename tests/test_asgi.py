"""The production command line (gunicorn + uvicorn worker on codevector.asgi) serves the admin,
and routes the gateway's paths to the gateway app."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.servers import listening_socket, port_of

ROOT = Path(__file__).resolve().parent.parent


def wait_for(url: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_gunicorn_serves_the_admin_login_and_the_gateway_probes(test_database_url, tmp_path):
    sock = listening_socket()
    port = port_of(sock)
    env = {**os.environ, "DATABASE_URL": test_database_url, "USAGE_BUFFER_DIR": str(tmp_path)}
    with sock:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "codevector.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
             "--bind", f"fd://{sock.fileno()}", "--workers", "1"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=[sock.fileno()],
        )
    try:
        login = wait_for(f"http://127.0.0.1:{port}/admin/login/")
        page = login.read().decode()
        assert login.status == 200 and "CodeVector" in page and 'name="password"' in page
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err.decode()[-2000:]
