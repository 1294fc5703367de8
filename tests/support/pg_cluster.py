"""A private PostgreSQL cluster on a port of its own, for tests that stop and start the server.

The shared server on 5432 is never touched. `initdb` refuses to run as root, so as root the
cluster belongs to the `postgres` user, in a directory that user owns.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import free_port


def _bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(candidates[-1])


class PrivateCluster:
    def __init__(self):
        self.bin = _bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cv-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8")
        self.running = self._started = False

    def _run(self, tool: str, *args: str) -> str:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server. PostgreSQL binds its port itself, so on its first start another process
        may have taken the port `free_port` gave: then it starts again on another (later starts
        keep the port: the cluster's URL is out by then)."""
        for attempt in range(5):
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c max_connections=100")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30",
                          "start")
            except subprocess.CalledProcessError:
                lost_the_port = self.log.exists() and "could not bind" in self.log.read_text(errors="replace")
                if self._started or not lost_the_port or attempt == 4:
                    raise
                self.log.unlink()
                self.port = free_port()
            else:
                break
        self._started = self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        self.running = False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if self.running:
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
