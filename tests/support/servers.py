"""Real processes on loopback for end-to-end tests and benchmarks: the mock upstream and the
gateway under gunicorn, against a database named by URL."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port free now (for servers that cannot take a socket, like PostgreSQL: another process may
    take it before they bind; prefer `listening_socket`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_socket() -> socket.socket:
    """A socket already bound to a free loopback port and listening, for a server to serve on (a
    child process inherits it: `Process(..., sockets=[sock])`). Binding first leaves no moment in
    which another test's process could take the port: with a port number alone, a server that lost
    that race died with "address already in use" while its caller talked to the winner."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def port_of(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def manage(database_url: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DATABASE_URL": database_url, **(env or {})})
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def wait_for_http(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for_port(port: int, seconds: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Process:
    """A child process, stopped with SIGTERM (then SIGKILL) when the block ends."""

    def __init__(self, args: list[str], env: dict, log: Path, sockets: tuple[socket.socket, ...] = ()):
        """`sockets` are handed to the child (their numbers stay the same there) and closed here:
        the child serves on them."""
        self.log = log
        self._log_file = open(log, "wb")
        try:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                         pass_fds=[sock.fileno() for sock in sockets])
        finally:
            for sock in sockets:
                sock.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_mock_upstream(workdir: Path, *extra: str) -> tuple[Process, str]:
    sock = listening_socket()
    port = port_of(sock)
    process = Process([sys.executable, "manage.py", "mock_upstream", "--fd", str(sock.fileno()), *extra],
                      {**os.environ}, workdir / "mock-upstream.log", sockets=(sock,))
    wait_for_http(f"http://127.0.0.1:{port}/healthz")
    return process, f"http://127.0.0.1:{port}"


def start_gateway(database_url: str, workdir: Path, workers: int = 1, env: dict | None = None) -> tuple[Process, str]:
    sock = listening_socket()
    port = port_of(sock)
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "USAGE_BUFFER_DIR": str(workdir / "usage-buffer"),
        "GATEWAY_CACHE_SECONDS": "1",
        **(env or {}),
    }
    process = Process([sys.executable, "-m", "gunicorn", "codevector.asgi:application", "-k",
                       "uvicorn_worker.UvicornWorker", "--bind", f"fd://{sock.fileno()}", "--workers", str(workers),
                       "--graceful-timeout", "20"], environment, workdir / "gateway.log", sockets=(sock,))
    wait_for_http(f"http://127.0.0.1:{port}/healthz")
    return process, f"http://127.0.0.1:{port}"
