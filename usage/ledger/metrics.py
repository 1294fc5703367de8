"""The usage side's Prometheus metrics: the ledger's group commit (batch size, commit latency) and
degraded mode (database down, deltas buffered, dead-lettered, lost), read from a store's status.

Here, not in gateway.metrics, because usage never imports gateway; gateway.metrics serves them with
its own. They are prometheus_client objects in its default registry, so they work in one process
and, with PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py), in each of gunicorn's workers, summed.
"""

from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram


class PendingHistogram:
    """Observations of one histogram (a child, if labelled) counted in plain lists on the event
    loop's thread and added to prometheus_client's values when flushed (at a scrape, and every
    second under gunicorn: gateway.metrics). In multiprocess mode each value prometheus_client
    changes takes a lock, a getpid() system call and an mmap write, and an observation changes
    two; on the request path that was most of what the metrics cost (README, Metrics)."""

    __slots__ = ("histogram", "bounds", "counts", "total")

    def __init__(self, histogram):
        self.histogram = histogram
        self.bounds = tuple(histogram._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.total += value

    def flush(self) -> None:
        counts, total = self.counts, self.total
        if not any(counts):
            return
        self.counts, self.total = [0] * len(counts), 0.0
        # prometheus_client keeps a histogram as a sum and one count per bucket, not cumulative
        # (prometheus-client is pinned; tests/test_metrics.py reads the buckets back).
        self.histogram._sum.inc(total)
        for bucket, count in zip(self.histogram._buckets, counts):
            if count:
                bucket.inc(count)


LEDGER_BATCH_SIZE = Histogram(
    "codevector_ledger_batch_size", "Deltas written together by one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
LEDGER_COMMIT_SECONDS = Histogram(
    "codevector_ledger_commit_seconds",
    "Time one group commit took, from the batch going out to its outcome (the buffer's if the database is down).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
_batch_sizes = PendingHistogram(LEDGER_BATCH_SIZE)
_commit_seconds = PendingHistogram(LEDGER_COMMIT_SECONDS)

# Gauges are set by each process from its own store: "livemax" and "livesum" keep only live
# processes' values in multiprocess mode (a dead worker's are dropped by gunicorn.conf.py's child_exit).
DATABASE_DOWN = Gauge(
    "codevector_usage_database_down",
    "1 while a gateway process sends usage to its disk buffer because the database is unavailable (degraded mode).",
    multiprocess_mode="livemax")
BUFFER_WRITABLE = Gauge(
    "codevector_usage_buffer_writable", "0 when a gateway process cannot write to its disk buffer.",
    multiprocess_mode="livemin")
# Counters (a process's totals since it started, as its store counts them), never reset by a worker's exit.
BUFFERED = Counter("codevector_usage_buffered_deltas", "Deltas written to the disk buffer (the database was down).")
REJECTED = Counter("codevector_usage_rejected_deltas",
                   "Deltas the database refused (a constraint), kept as dead letters with the reason.")
LOST = Counter("codevector_usage_lost_deltas",
               "Deltas neither the database nor the buffer could take, logged for `drain_usage_buffer --from-log`.")


def observe_commit(batch_size: int, seconds: float) -> None:
    """One group commit (usage.ledger.committer.GroupCommitter), counted until the next flush_ledger()."""
    _batch_sizes.observe(batch_size)
    _commit_seconds.observe(seconds)


def flush_ledger() -> None:
    _batch_sizes.flush()
    _commit_seconds.flush()


class StoreMetrics:
    """Copies one store's status (usage.store.StoreStatus) into the metrics above, when asked
    (at a scrape, and periodically in each of gunicorn's workers): the store counts in plain ints,
    so its request path pays nothing for them."""

    def __init__(self):
        self._seen = {"buffered": 0, "rejected": 0, "lost": 0}

    def sync(self, status) -> None:
        DATABASE_DOWN.set(0 if status.database_up else 1)
        BUFFER_WRITABLE.set(1 if status.buffer_writable else 0)
        for name, counter in (("buffered", BUFFERED), ("rejected", REJECTED), ("lost", LOST)):
            now = getattr(status, name)
            added = now - self._seen[name]
            if added < 0:  # a new store (the gateway restarted in this process): counting starts again
                added = now
            if added:
                counter.inc(added)
            self._seen[name] = now
