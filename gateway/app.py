"""The /v1/ ASGI application: authenticate, parse, resolve the facade, check budgets, forward,
count. No Django request, middleware or ORM query runs per request: keys, facades and budgets
come from in-process snapshots refreshed in the background, usage goes through the usage store
(group commit to the database, the disk buffer when it is down), upstream traffic through one
shared aiohttp session.
"""

import asyncio
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import aiohttp
from django.conf import settings
from django.db import connections
from django.utils import timezone

from gateway import upstream
from gateway.catalog import FacadeInfo, load_facades
from gateway.keys import KeyCache, KeyInfo, load_key, load_usable_keys, presented_key, touch_keys
from gateway.providers import SSEReader, Usage, strict_json
from gateway.providers import anthropic, openai
from usage.budgets import BudgetBook, tightest, usd
from usage.ledger import UsageDelta
from usage.pricing import cost_nanos, nanos_to_usd
from usage.store import UsageStore

logger = logging.getLogger("codevector.gateway")

PROBES = ("/healthz", "/readyz")
# (method, path) -> (protocol module, what the upstream path is, the request's kind)
ROUTES = {
    ("POST", "/v1/chat/completions"): (openai, "/chat/completions"),
    ("POST", "/v1/embeddings"): (openai, "/embeddings"),
    ("POST", "/v1/messages"): (anthropic, "/v1/messages"),
}
ENDPOINT_OF = {"openai": "/v1/chat/completions or /v1/embeddings", "anthropic": "/v1/messages"}
TOUCH_KEYS_SECONDS = 60


def is_gateway_path(path: str) -> bool:
    return path.startswith("/v1/") or path in PROBES


class Refusal(Exception):
    """A request the gateway answers itself, before forwarding: nothing is recorded."""

    def __init__(self, status: int, message: str, *, type: str | None = None, code: str | None = None,
                 param: str | None = None, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or []


@dataclass
class Call:
    """One request on its way through the gateway."""

    scope: dict
    receive: object
    send: object
    protocol: object = openai
    request_id: str = field(default_factory=lambda: "req_" + uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    key: KeyInfo | None = None
    facade: FacadeInfo | None = None
    status: int = 0
    usage: Usage | None = None
    cost: int | None = None
    extra_headers: list = field(default_factory=list)

    @cached_property
    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]}

    def response_headers(self, content_type: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"x-codevector-request-id", self.request_id.encode())]
        if self.cost is not None:
            headers.append((b"x-codevector-cost-usd", format(nanos_to_usd(self.cost), "f").encode()))
        return headers + self.extra_headers

    async def respond(self, status: int, body: bytes, headers: list | None = None,
                      content_type: bytes = b"application/json") -> None:
        self.status = status
        await self.send({"type": "http.response.start", "status": status,
                         "headers": self.response_headers(content_type) + (headers or [])})
        await self.send({"type": "http.response.body", "body": body})


class GatewayApp:
    def __init__(self):
        self.keys = KeyCache()
        self.facades: dict[str, FacadeInfo] = {}
        self.budgets = BudgetBook()
        self.store: UsageStore | None = None
        self.session: aiohttp.ClientSession | None = None
        # One thread for the background refreshes and the rare key look-up: its Django connection
        # is closed on stop.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db")
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

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
            self.store = UsageStore()
            await self.store.open()
            self.session = upstream.open_session()
            await self.refresh()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._refresh_forever(), name="gateway-cache-refresh"),
                           loop.create_task(self._touch_keys_forever(), name="gateway-key-last-used")]
            self._started = True

    async def stop(self) -> None:
        """After the server has let requests in flight finish: commit every pending delta."""
        if not self._started:
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._touch_keys()
        await self._in_db_thread(connections.close_all)
        await self.store.close()
        await self.session.close()
        self._started = False

    # --- background refresh -----------------------------------------------------------------

    async def _in_db_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._db, function, *args)

    async def refresh(self) -> None:
        """Keys, facades and budgets from the database; the last good snapshot stays on failure."""
        try:
            keys, facades = await self._in_db_thread(lambda: (load_usable_keys(), load_facades()))
        except Exception as exc:
            logger.warning("gateway cache refresh failed, keeping the last snapshot: %s", exc)
            return
        self.keys.replace(keys)
        self.facades = facades
        try:
            await self._in_db_thread(self.budgets.refresh)
        except Exception as exc:
            logger.warning("budget refresh failed, keeping the last snapshot: %s", exc)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.GATEWAY_CACHE_SECONDS)
            await self.refresh()

    async def _touch_keys(self) -> None:
        used = self.keys.take_used()
        if used:
            try:
                await self._in_db_thread(touch_keys, used)
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
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            await Call(scope, receive, send).respond(200, b'{"status":"ok"}')
            return
        if path == "/readyz":
            await self._ready(Call(scope, receive, send))
            return
        call = Call(scope, receive, send)
        route = ROUTES.get((method, path))
        if route:
            call.protocol = route[0]
        elif "anthropic-version" in call.headers:
            call.protocol = anthropic
        try:
            if (method, path) == ("GET", "/v1/models"):
                await self._models(call)
            elif route:
                await self._proxy(call, route[1])
            else:
                raise Refusal(404, f"No route {method} {path}. The gateway serves POST /v1/chat/completions, "
                                   "POST /v1/embeddings, POST /v1/messages and GET /v1/models.")
        except Refusal as refusal:
            await call.respond(refusal.status, call.protocol.error_body(
                refusal.status, refusal.message, type=refusal.type, code=refusal.code, param=refusal.param),
                refusal.headers)
        finally:
            self._log(call)

    async def _ready(self, call: Call) -> None:
        status = self.store.status()
        ready = (status.database_up or status.buffer_writable) and self.keys.loaded and status.accepting
        body = {"ready": ready, "keys_loaded": self.keys.loaded, **status.as_dict()}
        await call.respond(200 if ready else 503, json.dumps(body).encode())

    def _authenticate_cached(self, call: Call) -> tuple[str, KeyInfo | None, bool]:
        if not self.keys.loaded:
            raise Refusal(503, "The gateway cannot check API keys yet: its database is unavailable. Retry shortly.",
                          code="gateway_unavailable")
        raw = presented_key(call.headers)
        if raw is None:
            raise Refusal(401, "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                          code="missing_api_key")
        return self.keys.find(raw)

    async def _authenticate(self, call: Call) -> None:
        digest, info, ask_database = self._authenticate_cached(call)
        if info is None and ask_database:
            try:
                info = await self._in_db_thread(load_key, digest)
            except Exception as exc:
                logger.warning("key lookup failed: %s", exc)
            self.keys.learn(digest, info)
        if info is None:
            raise Refusal(401, "Invalid API key: it is unknown, revoked or expired.", code="invalid_api_key")
        call.key = info
        self.keys.mark_used(info.key_id)

    async def _models(self, call: Call) -> None:
        await self._authenticate(call)
        facades = sorted(self.facades.values(), key=lambda f: f.name)
        created = min((f.created for f in facades), default=0)
        await call.respond(200, json.dumps(call.protocol.models_list(facades, created)).encode())

    async def _read_body(self, call: Call) -> bytes:
        limit = settings.GATEWAY_MAX_BODY_BYTES
        too_large = Refusal(413, f"Request body is larger than the gateway's limit of {limit} bytes.",
                            code="request_too_large")
        declared = call.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                raise Refusal(400, "The client went away before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def _parse(raw: bytes) -> dict:
        try:
            body = strict_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refusal(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise Refusal(400, "The request body must be a JSON object.", code="invalid_json")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise Refusal(400, "'model' is required and must be a string naming a model.", param="model")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise Refusal(400, "'stream' must be true or false.", param="stream")
        return body

    def _facade(self, call: Call, model: str) -> FacadeInfo:
        facade = self.facades.get(model)
        if facade is None:
            raise Refusal(404, f"The model '{model}' does not exist or is not active on this gateway "
                               "(GET /v1/models lists them).", code="model_not_found", param="model")
        if facade.provider != call.protocol.NAME:
            raise Refusal(400, f"The model '{model}' speaks the {facade.provider} protocol: "
                               f"use {ENDPOINT_OF[facade.provider]}.", code="wrong_endpoint", param="model")
        return facade

    def _check_budgets(self, call: Call) -> None:
        states = self.budgets.states(call.key.user_id, timezone.now())
        over = [s for s in states if s.exceeded]
        tight = tightest(over or states)
        if tight is not None:
            call.extra_headers += [(b"x-codevector-budget-limit-usd", usd(tight.rule.limit_nanos).encode()),
                                   (b"x-codevector-budget-remaining-usd",
                                    usd(max(tight.remaining_nanos, 0)).encode())]
            if tight.resets_at:
                call.extra_headers.append((b"x-codevector-budget-reset",
                                           timezone.localtime(tight.resets_at).isoformat().encode()))
            if any(s.warning for s in states):
                call.extra_headers.append((b"x-codevector-budget-warning", b"true"))
        if over:
            raise Refusal(429, over[0].refusal_message(), type="budget_exceeded", code="budget_exceeded")

    async def _proxy(self, call: Call, upstream_path: str) -> None:
        if not self.store.accepting:
            self.store.count_refusal()
            raise Refusal(503, "The gateway cannot record usage right now (database and disk buffer both "
                               "unavailable), so it is not serving requests. Retry shortly.",
                          code="usage_unrecordable")
        await self._authenticate(call)
        body = self._parse(await self._read_body(call))
        facade = call.facade = self._facade(call, body["model"])
        self._check_budgets(call)
        credential = None
        if facade.api_key_env:
            credential = os.environ.get(facade.api_key_env)
            if not credential:
                raise Refusal(502, f"The upstream credential for '{facade.name}' is not configured on the gateway.",
                              code="upstream_credential_missing")
        stream = body.get("stream") is True and upstream_path != "/embeddings"
        outgoing, caller_wants_usage = call.protocol.prepare_request(body, facade.upstream_model, stream)
        headers = upstream.request_headers(call.headers, call.protocol.auth_headers(credential))
        headers["content-type"] = "application/json"
        if call.protocol is anthropic:
            headers.setdefault("anthropic-version", anthropic.VERSION)
        url = facade.base_url + upstream_path
        payload = json.dumps(outgoing, separators=(",", ":")).encode()
        try:
            response = await self.session.post(url, data=payload, headers=headers, timeout=upstream.timeout())
        except asyncio.TimeoutError:
            await self._record(call, Usage(), error=True)
            raise Refusal(504, f"The upstream for '{facade.name}' did not answer in time.", code="upstream_timeout")
        except aiohttp.ClientError as exc:
            await self._record(call, Usage(), error=True)
            raise Refusal(502, f"The upstream for '{facade.name}' could not be reached ({type(exc).__name__}).",
                          code="upstream_unreachable")
        try:
            if response.status >= 400 or not stream:
                await self._whole_response(call, response, body)
            else:
                await self._streamed_response(call, response, body, caller_wants_usage)
        finally:
            response.release()

    async def _whole_response(self, call: Call, response: aiohttp.ClientResponse, body: dict) -> None:
        try:
            data = await response.read()
        except asyncio.TimeoutError:
            await self._record(call, Usage(), error=True)
            raise Refusal(504, f"The upstream for '{call.facade.name}' did not answer in time.",
                          code="upstream_timeout")
        except aiohttp.ClientError:
            await self._record(call, Usage(), error=True)
            raise Refusal(502, f"The upstream for '{call.facade.name}' dropped the connection.",
                          code="upstream_unreachable")
        content_type = response.headers.get("content-type", "application/json").encode("latin-1")
        if response.status >= 400:
            await self._record(call, Usage(), error=True)
            await call.respond(response.status, data, upstream.response_headers(response.headers), content_type)
            return
        try:
            data, usage = call.protocol.finish_response(data, call.facade.name, body)
        except ValueError:
            await self._record(call, Usage(), error=True)
            raise Refusal(502, f"The upstream for '{call.facade.name}' answered with something that is not JSON.",
                          code="upstream_bad_response")
        await self._record(call, usage)
        await call.respond(response.status, data, upstream.response_headers(response.headers), content_type)

    async def _streamed_response(self, call: Call, response: aiohttp.ClientResponse, body: dict,
                                 caller_wants_usage: bool) -> None:
        state = call.protocol.StreamState(call.facade.name, caller_wants_usage, body)
        reader = SSEReader()
        disconnected = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(call, disconnected, response))
        call.status = response.status
        await call.send({"type": "http.response.start", "status": response.status,
                         "headers": call.response_headers(b"text/event-stream; charset=utf-8")
                         + [(b"cache-control", b"no-cache")] + upstream.response_headers(response.headers)})
        recorded = False
        error = False
        try:
            async for chunk in response.content.iter_any():
                for raw, name, data in reader.feed(chunk):
                    out = state.process(raw, name, data)
                    if (state.done or state.error) and not recorded:
                        # The delta is stored before the last event goes out.
                        await self._record(call, state.usage(), error=state.error)
                        recorded = True
                    if out and not disconnected.is_set():
                        await call.send({"type": "http.response.body", "body": out, "more_body": True})
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            error = not disconnected.is_set()
        finally:
            watcher.cancel()
        if not recorded:
            # Cut short: a disconnect is not an error; an upstream that stopped mid-stream is.
            await self._record(call, state.usage(), error=error or (not state.done and not disconnected.is_set()))
        if not disconnected.is_set():
            await call.send({"type": "http.response.body", "body": reader.rest(), "more_body": False})

    @staticmethod
    async def _watch_disconnect(call: Call, disconnected: asyncio.Event, response) -> None:
        while True:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                response.close()  # stop reading from the upstream
                return

    async def _record(self, call: Call, usage: Usage, error: bool = False) -> None:
        facade, key = call.facade, call.key
        call.usage = usage
        call.cost = cost_nanos(facade.prices, input_tokens=usage.input_tokens,
                               cached_input_tokens=usage.cached_input_tokens,
                               cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens)
        now = timezone.now()
        delta = UsageDelta(
            id=call.request_id, user_id=key.user_id, facade_id=facade.facade_id, at=now, requests=1,
            error_requests=int(error), estimated_requests=int(usage.estimated), input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens, cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens, cost_nanos=call.cost,
        )
        await self.store.record(delta)
        self.budgets.add_spend(key.user_id, now, call.cost)

    @staticmethod
    def _log(call: Call) -> None:
        usage = call.usage or Usage()
        logger.info(json.dumps({
            "event": "request", "request_id": call.request_id, "method": call.scope.get("method"),
            "path": call.scope.get("path"), "status": call.status,
            "user": call.key.username if call.key else None, "key_prefix": call.key.prefix if call.key else None,
            "facade": call.facade.name if call.facade else None, "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens, "cache_write_tokens": usage.cache_write_tokens,
            "output_tokens": usage.output_tokens, "estimated": usage.estimated,
            "cost_usd": format(nanos_to_usd(call.cost), "f") if call.cost is not None else None,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 2),
        }, separators=(",", ":")))
