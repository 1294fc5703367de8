"""The /v1/ ASGI application's shell: lifespan, the background refresh of its snapshots, routing
and the health probes. Each request goes through `gateway.pipeline`.

No Django request, middleware or ORM query runs per request: keys, facades and budgets come from
in-process snapshots refreshed in the background, usage goes through the usage store (group
commit to the database, the disk buffer when it is down), upstream traffic through one shared
upstream client (gateway.http_client).
"""

import asyncio
import gc
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connections

from gateway import upstream
from gateway.catalog import load_facades
from gateway.http_client import HttpClient
from gateway.keys import KeyCache, load_usable_keys, touch_keys
from gateway.call import Call, Refusal, request_ids
from gateway.pipeline import Pipeline, Route
from gateway import providers
from gateway import metrics
from gateway.providers import anthropic, openai, responses
from usage.budgets.book import BudgetBook, BudgetSnapshot
from usage.store import UsageStore

logger = logging.getLogger("codevector.gateway")

PROBES = ("/healthz", "/readyz", "/metrics")
ROUTES = {
    ("POST", "/v1/responses"): Route(responses, "/responses"),
    ("POST", "/v1/responses/compact"): Route(responses, "/responses/compact"),
    ("POST", "/v1/responses/input_tokens"): Route(responses, "/responses/input_tokens", billed=False),
    ("POST", "/v1/chat/completions"): Route(openai, "/chat/completions"),
    ("POST", "/v1/embeddings"): Route(openai, "/embeddings"),
    ("POST", "/v1/messages"): Route(anthropic, "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"): Route(anthropic, "/v1/messages/count_tokens", billed=False),
}
SERVED = ", ".join(f"{method} {path}" for method, path in [*ROUTES, ("GET", "/v1/models")])
STORED_RESPONSES = ("Stored responses cannot be retrieved, cancelled or deleted through the gateway (GET or DELETE "
                    "/v1/responses/{id}, POST /v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items): "
                    "chain turns with previous_response_id in POST /v1/responses instead.")
TOUCH_KEYS_SECONDS = 60
# The garbage collector's thresholds once a worker has started (Python's default: 700, 10, 10).
# Each request leaves a few reference cycles behind (the upstream answer and its connection, asyncio's
# futures), so at the defaults the young generation fills many times a second and full collections
# follow often, each walking every object of Django and the gateway while every request in flight
# waits (the tail latency under load). Started objects are frozen out of the collector's walks
# (gc.freeze) and the young generation is collected far less often (README, Performance).
GC_THRESHOLDS = (10_000, 20, 100)


# OpenAI-shaped organization usage and costs are database reads for dashboards: Django serves them
# (usage.web.openai_usage), not the hot path.
DJANGO_UNDER_V1 = "/v1/organization/"


def is_gateway_path(path: str) -> bool:
    return (path.startswith("/v1/") and not path.startswith(DJANGO_UNDER_V1)) or path in PROBES


def tune_gc() -> None:
    """Collect what starting left behind, freeze the survivors (modules, Django, the snapshots) out
    of every later collection, and collect the young generation less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GatewayApp:
    def __init__(self):
        self.keys = KeyCache()
        self.budgets = BudgetBook()
        self.store: UsageStore | None = None
        self.upstream: HttpClient | None = None
        # One thread for the background refreshes and the rare key look-up: its Django connection
        # is closed on stop.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pipeline: Pipeline | None = None  # made at start, once the store and the upstream client are open
        self.requests_in_progress = 0  # the commit's spin (usage.ledger.committer.GroupCommitter) reads it
        self.metrics = metrics.NO_METRICS  # gateway.metrics: chosen at start, from settings

    # --- lifecycle --------------------------------------------------------------------------

    async def lifespan(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # pragma: no cover - reported to the server, which exits
                    logger.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self.loop = asyncio.get_running_loop()
            providers.MAX_REPORTED_TOKENS = settings.GATEWAY_MAX_REPORTED_TOKENS
            request_ids.reset()  # this process's own prefix (gunicorn may have imported us before forking)
            self.store = UsageStore(in_progress=lambda: self.requests_in_progress)
            await self.store.open()
            self.upstream = upstream.open_client()
            self.metrics = metrics.for_gateway(self.upstream, self.store)
            self.pipeline = Pipeline(keys=self.keys, budgets=self.budgets, store=self.store, upstream=self.upstream,
                                     metrics=self.metrics, db=self._db)
            await self.refresh()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._refresh_forever(), name="gateway-cache-refresh"),
                           loop.create_task(self._touch_keys_forever(), name="gateway-key-last-used"),
                           loop.create_task(self.metrics.sync_forever(), name="gateway-metrics")]
            self._started = True
            tune_gc()

    async def stop(self) -> None:
        """After the server has let requests in flight finish: commit every pending delta."""
        if not self._started:
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._touch_keys()
        await self.in_db_thread(connections.close_all)
        await self.store.close()
        await self.upstream.close()
        self._started = False

    # --- background refresh -----------------------------------------------------------------

    async def in_db_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._db, function, *args)

    async def refresh(self) -> None:
        """Keys, facades and budgets from the database; the last good snapshot stays on failure."""
        try:
            keys, facades = await self.in_db_thread(lambda: (load_usable_keys(), load_facades()))
        except Exception as exc:
            logger.warning("gateway cache refresh failed, keeping the last snapshot: %s", exc)
            return
        self.keys.replace(keys)
        self.pipeline.facades = facades  # replaced whole, never changed in place: each request reads it once
        try:
            snapshot = await self.in_db_thread(BudgetSnapshot.read)
        except Exception as exc:
            logger.warning("budget refresh failed, keeping the last snapshot: %s", exc)
            return
        self.budgets.install(snapshot)  # here, on the loop: the thread that checks and adds spend

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.GATEWAY_CACHE_SECONDS)
            await self.refresh()

    async def _touch_keys(self) -> None:
        used = self.keys.take_used()
        if used:
            try:
                await self.in_db_thread(touch_keys, used)
            except Exception as exc:
                logger.info("could not update last_used_at of %d key(s): %s", len(used), exc)

    async def _touch_keys_forever(self) -> None:
        while True:
            await asyncio.sleep(TOUCH_KEYS_SECONDS)
            await self._touch_keys()

    # --- requests ---------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if not self._started:
            await self.start()  # servers that skip lifespan
        self.requests_in_progress += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self.requests_in_progress -= 1

    async def _serve(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        call = Call(scope, receive, send)
        if path == "/healthz":
            await call.respond(200, b'{"status":"ok"}')
            return
        if path == "/readyz":
            await self._ready(call)
            return
        if path == "/metrics":
            await self.metrics.serve(call)
            return
        route = ROUTES.get((method, path))
        if route:
            call.protocol = route.protocol
        elif "anthropic-version" in call.headers:
            call.protocol = anthropic
        try:
            if (method, path) == ("GET", "/v1/models"):
                await self.pipeline.models(call)
            elif route:
                await self.pipeline.proxy(call, route, settings.GATEWAY_MAX_BODY_BYTES)
            elif path.startswith("/v1/responses/"):
                raise Refusal(404, f"No route {method} {path}. {STORED_RESPONSES}", code="unsupported_endpoint")
            else:
                raise Refusal(404, f"No route {method} {path}. The gateway serves {SERVED}.")
        except Refusal as refusal:
            await call.refuse(refusal)
        finally:
            self.metrics.answered(call)  # once per request: under its facade if recorded, else facade=""
            call.log()

    async def _ready(self, call: Call) -> None:
        status = self.store.status()
        ready = (status.database_up or status.buffer_writable) and self.keys.loaded and status.accepting
        body = {"ready": ready, "keys_loaded": self.keys.loaded, **status.as_dict()}
        await call.respond(200 if ready else 503, json.dumps(body).encode())
