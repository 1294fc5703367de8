"""gunicorn reads this file from its working directory by default, so the README's command line
(`gunicorn codevector.asgi:application -k uvicorn_worker.UvicornWorker ...`) runs these hooks."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# The directory prometheus_client's multiprocess mode shares between the workers (gateway.metrics):
# made fresh by on_starting, removed by on_exit; None when the operator named one.
_metrics_dir = None


def on_starting(server):
    """Refuse to start without a SECRET_KEY, before anything listens: gunicorn's master binds the
    port before its workers import Django, so an error raised in the workers would leave the port
    open (and answering nothing) for a moment, and a supervisor would restart it in a loop."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        from codevector import settings
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"codevector: {exc}\n")
        sys.exit(1)
    if not settings.SECRET_KEY:
        sys.stderr.write(f"codevector: {settings.SECRET_KEY_MISSING}\n")
        sys.exit(1)
    share_metrics_between_workers()


def share_metrics_between_workers():
    """Point prometheus_client at a directory every worker writes its metrics to, before any of
    them imports it (the mode is chosen at import), so that /metrics sums the workers. A fresh
    private one (0700) per start: values left by a previous run would be added to this one's."""
    global _metrics_dir
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:  # the operator's: emptied of old values, kept at exit
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return
    _metrics_dir = tempfile.mkdtemp(prefix="codevector-metrics-")  # mode 0700
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def child_exit(server, worker):
    """A worker's live gauges (open connections, degraded mode) go with it; its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
