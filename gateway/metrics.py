"""/metrics: the gateway's Prometheus metrics, in prometheus_client's text format.

Under gunicorn, gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a private directory before the
workers fork: each worker writes its values to files there and a scrape, whichever worker answers
it, sums them all. A lone process (uvicorn, the tests) uses prometheus_client's default registry.

The request path only adds to plain ints kept per facade (no `.labels()` look-up, no lock, no
write to prometheus_client's values, which in multiprocess mode cost a lock, a getpid() system
call and an mmap write each); the counts are added to the metrics when a scrape comes and, under
gunicorn, every FLUSH_SECONDS in every worker, so that a scrape answered by one worker sees the
others' too. Gauges of state that other objects own (the upstream pool, the usage store) are copied
at the same moments ("livesum"/"livemax": only live workers count).

No user or key labels: their number grows with the users, and every series is kept by Prometheus;
the ledger already has usage per user and key, exactly (README, Metrics).
"""

import asyncio
import hmac
import logging
from operator import add, attrgetter

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder

from usage.counters import COUNTERS
from usage.ledger.metrics import PendingHistogram, StoreMetrics, flush_ledger  # and the ledger's metrics, registered

logger = logging.getLogger("codevector.gateway")

FLUSH_SECONDS = 1.0
# An LLM answer may take minutes: buckets well past prometheus_client's default 10 s.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(
    "codevector_requests",
    "Requests answered on /v1/, by facade and status class; facade=\"\" for requests not recorded in the ledger "
    "(refused before forwarding: no or bad key, bad JSON, unknown model, budget, 503; and free calls).",
    ["facade", "status"])
TOKENS = Counter("codevector_tokens", "Tokens recorded in the ledger, by facade and kind.", ["facade", "kind"])
SPEND = Counter("codevector_spend_nanodollars", "Spend recorded in the ledger, in nanodollars (1e-9 USD).", ["facade"])
UPSTREAM_SECONDS = Histogram(
    "codevector_upstream_seconds", "From sending the request upstream to the end of the answer.", ["facade"],
    buckets=SECONDS_BUCKETS)
FIRST_BYTE_SECONDS = Histogram(
    "codevector_upstream_first_byte_seconds", "From sending the request upstream to the upstream's response head.",
    ["facade"], buckets=SECONDS_BUCKETS)
CONNECTIONS_OPEN = Gauge("codevector_upstream_connections_open",
                         "Upstream connections open (idle or in use).", multiprocess_mode="livesum")
CONNECTIONS_IDLE = Gauge("codevector_upstream_connections_idle",
                         "Upstream connections open and idle, kept for reuse.", multiprocess_mode="livesum")

# Every token counter of the ledger (usage.counters: a new one is counted here too), labelled by
# its name without "_tokens": input, cached_input, cache_write, output, reasoning, ...
TOKEN_FIELDS = tuple(name for name in COUNTERS if name.endswith("_tokens"))
TOKEN_KINDS = tuple(name.removesuffix("_tokens") for name in TOKEN_FIELDS)
usage_of = attrgetter(*TOKEN_FIELDS, "cost_nanos")  # a delta's token counts, then its cost
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}  # anything else (0: nothing sent) is a 5xx


def multiprocess() -> bool:
    """Whether prometheus_client writes to PROMETHEUS_MULTIPROC_DIR: it decided when first imported."""
    return values.ValueClass is not values.MutexValue


class _Series:
    """One facade's counts since the last flush, in plain ints, beside the metric children they go
    to ('' : the requests not recorded in the ledger, which have only request counts)."""

    __slots__ = ("facade", "requests", "usage", "usage_children", "upstream", "first_byte")

    def __init__(self, facade: str):
        self.facade = facade
        self.requests: dict[int, list] = {}  # status // 100: [count, child]
        self.usage = [0] * (len(TOKEN_KINDS) + 1)  # TOKEN_KINDS, then nanodollars
        self.usage_children = ()
        self.upstream = self.first_byte = None

    def add_status(self, status: int) -> list:
        label = STATUS_CLASSES.get(status // 100, "5xx")
        entry = self.requests[status // 100] = [0, REQUESTS.labels(self.facade, label)]
        return entry

    def add_usage(self) -> "_Series":
        self.usage_children = (*(TOKENS.labels(self.facade, kind) for kind in TOKEN_KINDS), SPEND.labels(self.facade))
        self.upstream = PendingHistogram(UPSTREAM_SECONDS.labels(self.facade))
        self.first_byte = PendingHistogram(FIRST_BYTE_SECONDS.labels(self.facade))
        return self

    def flush(self) -> None:
        for entry in self.requests.values():
            if entry[0]:
                count, entry[0] = entry[0], 0
                entry[1].inc(count)
        usage, self.usage = self.usage, [0] * len(self.usage)
        for amount, child in zip(usage, self.usage_children):
            if amount:
                child.inc(amount)
        if self.upstream is not None:
            self.upstream.flush()
            self.first_byte.flush()


class GatewayMetrics:
    """The metrics of one gateway process (gateway.app.GatewayApp): counted by the request path in
    plain ints, added to prometheus_client's values when flushed (at each scrape; under gunicorn
    also every FLUSH_SECONDS, so that a scrape answered by another worker sees this one's), served
    on /metrics. Everything runs on the event loop's thread: no locks."""

    enabled = True

    def __init__(self, client, store):
        self.client = client  # the upstream client (gateway.http_client.HttpClient): its pool's gauges
        self.store = store  # usage.store.UsageStore: its degraded-mode gauges
        self._facades: dict[str, _Series] = {}
        self._unrecorded = _Series("")
        self._store = StoreMetrics()
        self._registry = None
        self._pool_warned = False

    # --- the request path ----------------------------------------------------------------------

    def _series(self, facade: str) -> _Series:
        series = self._facades.get(facade)
        if series is None:
            series = self._facades[facade] = _Series(facade).add_usage()
        return series

    def recorded(self, facade: str, delta) -> None:
        """A delta just recorded (gateway.pipeline's record()): its tokens and cost, as the ledger got them."""
        series = self._facades.get(facade) or self._series(facade)
        series.usage = list(map(add, series.usage, usage_of(delta)))

    def answered(self, call) -> None:
        """A /v1/ request answered: counted under its facade if it was recorded (record() set its
        cost), else under facade=""."""
        series = self._unrecorded if call.cost is None else (self._facades.get(call.facade.name)
                                                             or self._series(call.facade.name))
        entry = series.requests.get(call.status // 100) or series.add_status(call.status)
        entry[0] += 1

    def upstream(self, facade: str, first_byte: float, total: float) -> None:
        series = self._facades.get(facade) or self._series(facade)
        series.first_byte.observe(first_byte)
        series.upstream.observe(total)

    # --- scrapes -------------------------------------------------------------------------------

    def sync(self) -> None:
        """Add the counts since the last flush to prometheus_client's values, and copy what other
        objects own (the upstream pool, the usage store) into the gauges."""
        self._unrecorded.flush()
        for series in self._facades.values():
            series.flush()
        flush_ledger()
        pool = pool_connections(self.client)
        if pool is not None:
            CONNECTIONS_OPEN.set(pool[0])
            CONNECTIONS_IDLE.set(pool[1])
        elif self.client is not None and not self._pool_warned:
            self._pool_warned = True
            logger.warning("metrics: the upstream client's pool could not be read; its gauges stay unset")
        if self.store is not None:
            self._store.sync(self.store.status())

    async def sync_forever(self) -> None:
        """Under gunicorn, each worker writes to its own files, which any worker's scrape reads: its
        counts are flushed there every FLUSH_SECONDS, and once more when the worker stops."""
        if not multiprocess():
            return
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                self._sync_quietly()
        finally:
            self._sync_quietly()

    def _sync_quietly(self) -> None:
        try:
            self.sync()
        except Exception:  # pragma: no cover - a metric must never stop the gateway
            logger.exception("metrics: sync failed")

    def registry(self):
        if self._registry is None:
            if multiprocess():
                from prometheus_client.multiprocess import MultiProcessCollector

                self._registry = CollectorRegistry()
                MultiProcessCollector(self._registry)
            else:
                self._registry = REGISTRY
        return self._registry

    def authorized(self, headers: dict[str, str]) -> bool:
        token = settings.GATEWAY_METRICS_TOKEN
        if not token:
            return True
        presented = headers.get("authorization", "").encode("latin-1")
        return hmac.compare_digest(presented, f"Bearer {token}".encode("latin-1"))

    async def serve(self, call) -> None:
        if not self.authorized(call.headers):
            await call.respond(401, b'{"error":"/metrics needs Authorization: Bearer <GATEWAY_METRICS_TOKEN>."}',
                               [(b"www-authenticate", b'Bearer realm="metrics"')])
            return
        self.sync()
        encode, content_type = choose_encoder(call.headers.get("accept", ""))  # as Prometheus asks
        await call.respond(200, encode(self.registry()), content_type=content_type.encode())


class NoMetrics:
    """GATEWAY_METRICS_ENABLED=false: nothing counted, /metrics not served."""

    enabled = False

    def recorded(self, facade: str, delta) -> None:
        pass

    def answered(self, call) -> None:
        pass

    def upstream(self, facade: str, first_byte: float, total: float) -> None:
        pass

    async def sync_forever(self) -> None:
        pass

    async def serve(self, call) -> None:
        await call.respond(404, b'{"error":"Metrics are off on this gateway (GATEWAY_METRICS_ENABLED=false)."}')


NO_METRICS = NoMetrics()


def for_gateway(client, store):
    """The metrics of a gateway process whose upstream client and usage store these are."""
    return GatewayMetrics(client, store) if settings.GATEWAY_METRICS_ENABLED else NO_METRICS


def pool_connections(client) -> tuple[int, int] | None:
    """(open, idle) connections of the upstream client (gateway.http_client.HttpClient), read from
    its pool's private fields: None if they are not there (renamed), never an error in a scrape."""
    try:
        return len(client._open), sum(len(idle) for idle in client._idle.values())
    except (AttributeError, TypeError):
        return None
