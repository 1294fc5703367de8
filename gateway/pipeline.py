"""One gateway request, step by step: read → parse → resolve → check → forward → stream → record.

A `Call` (gateway.call) carries the request through the steps; a `Refusal` is an answer the
gateway gives itself (nothing is recorded, unless the upstream was asked: `refuse_after_error`).
The steps read the process's snapshots (keys, facades, budgets) and write through the usage store;
the ASGI shell in `gateway.app` owns those and hands them to the `Pipeline` it makes.
"""

import asyncio
import logging
import os
from concurrent.futures import Executor
from datetime import UTC, datetime
from time import perf_counter
from typing import NamedTuple, NoReturn

import orjson
from django.conf import settings

from gateway import upstream
from gateway.call import Call, Refusal
from gateway.catalog import FacadeInfo
from gateway.http_client import (HttpClient, Response, UpstreamError, UpstreamPoolFull, UpstreamProxyRefused,
                                  UpstreamSettingUnusable, UpstreamTooLarge, UpstreamUnreachable)
from gateway.keys import KeyCache, load_key, presented_key
from gateway.metrics import GatewayMetrics, NoMetrics
from gateway.models import credential_variable_allowed
from gateway.providers import SSEReader, SSETooLong, Unsupported, Usage, anthropic, estimate_tokens, strict_json
from usage.budgets.book import BudgetBook
from usage.budgets.rules import NO_BUDGET
from usage.ledger.delta import UsageDelta
from usage.pricing import cost_nanos
from usage.store import UsageStore

logger = logging.getLogger("codevector.gateway")

# Where a facade is answered, by (provider, kind): named when a model is asked at another endpoint.
ENDPOINT_OF = {("openai", "chat"): "/v1/responses or /v1/chat/completions", ("anthropic", "chat"): "/v1/messages",
               ("openai", "embeddings"): "/v1/embeddings"}
EMBEDDINGS_PATH = "/embeddings"  # the upstream path of POST /v1/embeddings (gateway.app.ROUTES)


class Route(NamedTuple):
    protocol: object  # a module of gateway.providers
    upstream_path: str
    billed: bool = True  # False: a free call (token counting), forwarded but neither budgeted nor recorded


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"Request body is larger than the gateway's limit of {limit} bytes.", code="request_too_large")


class Pipeline:
    """The request steps, over what one gateway process (`gateway.app`) has opened: the key cache and
    the budget book (refreshed in place), the usage store, the upstream client, the metrics, and the
    thread that runs the rare database look-up. `facades` is the facade snapshot: the shell's
    refresh replaces it whole, and each request reads it once."""

    def __init__(self, *, keys: KeyCache, budgets: BudgetBook, store: UsageStore, upstream: HttpClient,
                 metrics: GatewayMetrics | NoMetrics, db: Executor):
        self.keys, self.budgets, self.store, self.upstream, self.metrics = keys, budgets, store, upstream, metrics
        self.db = db
        self.facades: dict[str, FacadeInfo] = {}
        self.unpriced: set[tuple[str, str]] = set()  # (facade, tier or speed) already logged

    # --- authenticate ----------------------------------------------------------------------------

    async def authenticate(self, call: Call) -> None:
        keys = self.keys
        if not keys.loaded:
            raise Refusal(503, "The gateway cannot check API keys yet: its database is unavailable. Retry shortly.",
                          code="gateway_unavailable")
        raw = presented_key(call.headers)
        if raw is None:
            raise Refusal(401, "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
                          code="missing_api_key")
        found = keys.find(raw)
        info = found.info
        if info is None and found.ask_database:
            try:  # bounded: a database that stops answering must not hold the request (the thread may stay stuck)
                lookup = asyncio.get_running_loop().run_in_executor(self.db, load_key, found.digest)
                info = await asyncio.wait_for(lookup, settings.USAGE_DB_TIMEOUT_SECONDS)
            except Exception as exc:
                # Not "unknown": the key may be valid (made since the last refresh). Nothing is
                # remembered, so it works as soon as the database answers again.
                logger.warning("key lookup failed: %s", exc or type(exc).__name__)
                raise Refusal(503, "The gateway cannot check this API key right now: its database is unavailable. "
                                   "Retry shortly.", code="gateway_unavailable") from None
            keys.learn(found.digest, info)
        if info is None:
            raise Refusal(401, "Invalid API key: it is unknown, revoked or expired, or its user or project is inactive.",
                          code="invalid_api_key")
        call.key = info
        keys.mark_used(info.key_id)

    async def models(self, call: Call) -> None:
        await self.authenticate(call)
        facades = sorted(self.facades.values(), key=lambda f: f.name)
        created = min((f.created for f in facades), default=0)
        await call.respond(200, orjson.dumps(call.protocol.models_list(facades, created)))

    # --- read, parse, resolve, check -------------------------------------------------------------

    @staticmethod
    async def read_body(call: Call, limit: int) -> bytes:
        declared = call.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        message = await call.receive()
        body = message.get("body", b"")
        if message["type"] == "http.request" and not message.get("more_body") and len(body) <= limit:
            return body  # the usual case: the whole body in one message
        chunks, size = [], 0
        while True:
            if message["type"] == "http.disconnect":
                raise Refusal(400, "The client went away before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)
            message = await call.receive()

    @staticmethod
    def parse(raw: bytes) -> dict:
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

    def resolve(self, call: Call, model: str, upstream_path: str = "") -> FacadeInfo:
        """The active facade named `model`, if it answers this route (its upstream path tells an
        embeddings request from a chat one)."""
        facade = self.facades.get(model)
        if facade is None:
            raise Refusal(404, f"The model '{model}' does not exist or is not active on this gateway "
                               "(GET /v1/models lists them).", code="model_not_found", param="model")
        endpoints = ENDPOINT_OF[facade.provider, facade.kind]
        if facade.provider != call.protocol.NAME:
            raise Refusal(400, f"The model '{model}' speaks the {facade.provider} protocol: "
                               f"use {endpoints}.", code="wrong_endpoint", param="model")
        wanted = "embeddings" if upstream_path == EMBEDDINGS_PATH else "chat"
        if facade.kind != wanted:
            what = "an embeddings model" if facade.kind == "embeddings" else "not an embeddings model"
            raise Refusal(400, f"The model '{model}' is {what}: use {endpoints}.", code="wrong_endpoint",
                          param="model")
        return facade

    def check_budgets(self, call: Call) -> None:
        budgets, key = self.budgets, call.key
        if not budgets.applies_to(key.user_id, key.key_id, key.project_id):
            return
        verdict = budgets.check(key.user_id, datetime.now(UTC), key.key_id, key.project_id)
        if verdict is NO_BUDGET:
            return
        call.extra_headers += [(name.encode(), value.encode()) for name, value in verdict.headers]
        if verdict.refusal is not None:
            raise Refusal(429, verdict.refusal, type="budget_exceeded", code="budget_exceeded")

    # --- forward, stream, record -----------------------------------------------------------------

    async def proxy(self, call: Call, route: Route, max_body_bytes: int) -> None:
        store = self.store
        if route.billed and not store.accepting:
            store.count_refusal()
            raise Refusal(503, "The gateway cannot record usage right now (database and disk buffer both "
                               "unavailable), so it is not serving requests. Retry shortly.",
                          code="usage_unrecordable")
        await self.authenticate(call)
        body = self.parse(await self.read_body(call, max_body_bytes))
        facade = call.facade = self.resolve(call, body["model"], route.upstream_path)
        if route.billed:
            self.check_budgets(call)
        credential = None
        if facade.api_key_env:
            if not credential_variable_allowed(facade.api_key_env):  # whatever the database says
                raise Refusal(502, f"The upstream credential for '{facade.name}' names a variable the gateway "
                                   "does not read (manage.py check names the fix).", code="upstream_credential_refused")
            credential = os.environ.get(facade.api_key_env)
            if not credential:
                raise Refusal(502, f"The upstream credential for '{facade.name}' is not configured on the gateway.",
                              code="upstream_credential_missing")
        stream = body.get("stream") is True and route.upstream_path != "/embeddings"
        try:
            outgoing, caller_wants_usage = call.protocol.prepare_request(body, facade.upstream_model, stream)
        except Unsupported as exc:
            raise Refusal(400, str(exc), code="unsupported_parameter", param=exc.param) from None
        headers = upstream.request_headers(call.headers, call.protocol.auth_headers(credential))
        headers.update(facade.routing_headers)
        headers["content-type"] = "application/json"
        if call.protocol is anthropic:
            headers.setdefault("anthropic-version", anthropic.VERSION)
        payload = orjson.dumps(outgoing)
        sent = perf_counter()
        try:
            response = await self.upstream.post(facade.base_url + route.upstream_path, payload, headers,
                                                connect_timeout=settings.GATEWAY_CONNECT_TIMEOUT,
                                                read_timeout=settings.GATEWAY_READ_TIMEOUT,
                                                transport=facade.transport)
        except ValueError as exc:  # nothing was sent: a header that would break the request (a credential?)
            raise Refusal(502, f"The request to the upstream for '{facade.name}' could not be built: {exc}.",
                          code="upstream_request_invalid") from None
        except UpstreamUnreachable as exc:
            # No connection was made (a connect timeout too): the upstream is unreachable (502), not slow.
            # A full pool or a proxy's refusal says what happened (the proxy's status; never its
            # credentials); other failures name their kind only (no host names or paths).
            detail = f": {exc}" if isinstance(exc, (UpstreamPoolFull, UpstreamProxyRefused)) else ""
            if isinstance(exc, UpstreamSettingUnusable):  # the operator's to fix: the setting and path, logged
                logger.warning("facade %s: %s", facade.name, exc)
            await self.refuse_after_error(call, 502, f"The upstream for '{facade.name}' could not be reached "
                                          f"({type(exc).__name__}{detail}).", "upstream_unreachable", route.billed)
        except TimeoutError:  # connected, but no answer within the read timeout
            await self.refuse_after_error(call, 504, f"The upstream for '{facade.name}' did not answer in time.",
                                          "upstream_timeout", route.billed)
        except UpstreamError as exc:
            await self.refuse_after_error(call, 502, f"The upstream for '{facade.name}' could not be reached "
                                          f"({type(exc).__name__}).", "upstream_unreachable", route.billed)
        head = perf_counter()  # the upstream's response head: its time to first byte
        try:
            if not route.billed:
                await self.unbilled_response(call, response)
            elif response.status >= 400 or not stream:
                await self.whole_response(call, response, body)
            else:
                await self.streamed_response(call, response, body, caller_wants_usage)
        finally:
            response.release()
            self.metrics.upstream(facade.name, head - sent, perf_counter() - sent)

    @staticmethod
    async def unbilled_response(call: Call, response: Response) -> None:
        """A free call's answer (a token count), passed on as the upstream gave it."""
        try:
            data = await response.read()
        except (TimeoutError, UpstreamError):
            raise Refusal(502, f"The upstream for '{call.facade.name}' dropped the connection.",
                          code="upstream_unreachable") from None
        content_type = response.header("content-type", "application/json").encode("latin-1")
        await call.respond(response.status, data, upstream.response_headers(response.raw_headers), content_type)

    async def whole_response(self, call: Call, response: Response, body: dict) -> None:
        try:
            data = await response.read()
        except TimeoutError:
            await self.refuse_after_error(call, 504, f"The upstream for '{call.facade.name}' did not answer in time.",
                                          "upstream_timeout")
        except UpstreamTooLarge:
            # The upstream did the work: its prompt is counted, estimated (the answer was not kept).
            await self.refuse_after_error(
                call, 502, f"The upstream for '{call.facade.name}' answered with more than the gateway's limit of "
                f"{settings.GATEWAY_MAX_RESPONSE_BYTES} bytes.", "upstream_response_too_large",
                usage=Usage(input_tokens=estimate_tokens(call.protocol.prompt_text(body)), estimated=True))
        except UpstreamError:
            await self.refuse_after_error(call, 502, f"The upstream for '{call.facade.name}' dropped the connection.",
                                          "upstream_unreachable")
        content_type = response.header("content-type", "application/json").encode("latin-1")
        if response.status >= 400:
            await self.record(call, Usage(), error=True)
            await call.respond(response.status, data, upstream.response_headers(response.raw_headers), content_type)
            return
        try:
            data, usage = call.protocol.finish_response(data, call.facade.name, body)
        except ValueError:
            await self.refuse_after_error(call, 502, f"The upstream for '{call.facade.name}' answered with something "
                                          "that is not JSON.", "upstream_bad_response")
        await self.record(call, usage)
        await call.respond(response.status, data, upstream.response_headers(response.raw_headers), content_type)

    async def streamed_response(self, call: Call, response: Response, body: dict,
                                caller_wants_usage: bool) -> None:
        state = call.protocol.StreamState(call.facade.name, caller_wants_usage, body)
        reader = SSEReader()
        disconnected = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self.watch_disconnect(call, disconnected, response))
        call.status = response.status
        await call.send({"type": "http.response.start", "status": response.status,
                         "headers": call.response_headers(b"text/event-stream; charset=utf-8")
                         + [(b"cache-control", b"no-cache")] + upstream.response_headers(response.raw_headers)})
        recorded = False
        error = False
        last = b""  # what ends the stream: the upstream's unfinished bytes, or an error event
        try:
            async for chunk in response.iter_chunks():
                for raw, name, data in reader.feed(chunk):
                    out = state.process(raw, name, data)
                    if (state.done or state.error) and not recorded:
                        # The delta is stored before the last event goes out.
                        await self.record(call, state.usage(), error=state.error)
                        recorded = True
                    if out and not disconnected.is_set():
                        await call.send({"type": "http.response.body", "body": out, "more_body": True})
        except (TimeoutError, UpstreamError, OSError):
            error = not disconnected.is_set()
        except SSETooLong as exc:  # counted as estimated so far (state.usage()); the caller's SDK raises
            logger.warning("facade %s: the upstream's stream was cut: %s", call.facade.name, exc)
            error = True
            reader.rest()  # the runaway line is dropped, never passed on
            message = f"The upstream for '{call.facade.name}' sent a stream line longer than the gateway accepts."
            last = (b"event: error\n" if call.protocol is anthropic else b"") + b"data: " + call.protocol.error_body(
                502, message, code="upstream_bad_response") + b"\n\n"
        finally:
            watcher.cancel()
        if not recorded:
            # Cut short: a disconnect is not an error; an upstream that stopped mid-stream is.
            await self.record(call, state.usage(), error=error or (not state.done and not disconnected.is_set()))
        if not disconnected.is_set():
            await call.send({"type": "http.response.body", "body": last or reader.rest(), "more_body": False})

    @staticmethod
    async def watch_disconnect(call: Call, disconnected: asyncio.Event, response) -> None:
        while True:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                response.close()  # stop reading from the upstream
                return

    async def refuse_after_error(self, call: Call, status: int, message: str, code: str, billed: bool = True,
                                 usage: Usage | None = None) -> NoReturn:
        """Refuses a request the upstream was asked for (it may have done the work), recording it first
        as an error when it is billed: with what it is known to have used, else nothing."""
        if billed:
            await self.record(call, usage if usage is not None else Usage(), error=True)
        raise Refusal(status, message, code=code)

    def note_unpriced(self, facade: FacadeInfo, name: str | None) -> None:
        """A service tier or speed the facade has no prices for is billed at the base prices: said
        once per facade and name (per process), so an operator can add the variant."""
        if name is not None and (facade.name, name) not in self.unpriced:
            self.unpriced.add((facade.name, name))
            logger.warning("facade %s: the upstream served a request as %r, which has no prices of its own on the "
                           "facade; billed at the base prices (add the variant, or sync from the catalog)",
                           facade.name, name)

    async def record(self, call: Call, usage: Usage, error: bool = False) -> None:
        facade, key = call.facade, call.key
        call.usage = usage
        prices = facade.prices
        if usage.service_tier is not None or usage.speed is not None:
            self.note_unpriced(facade, prices.unpriced(usage.service_tier, usage.speed))
        call.cost = cost_nanos(prices, input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
                               cache_write_tokens=usage.cache_write_tokens,
                               cache_write_extended_tokens=usage.cache_write_extended_tokens,
                               output_tokens=usage.output_tokens, web_search_calls=usage.web_search_calls,
                               file_search_calls=usage.file_search_calls, service_tier=usage.service_tier,
                               speed=usage.speed)
        now = datetime.now(UTC)
        delta = UsageDelta(
            id=call.request_id, user_id=key.user_id, key_id=key.key_id, facade_id=facade.facade_id, at=now, requests=1,
            error_requests=int(error), estimated_requests=int(usage.estimated), input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens, cache_write_tokens=usage.cache_write_tokens,
            cache_write_extended_tokens=usage.cache_write_extended_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, web_search_calls=usage.web_search_calls,
            file_search_calls=usage.file_search_calls, cost_nanos=call.cost,
        )
        await self.store.record(delta)
        self.metrics.recorded(facade.name, delta)
        self.budgets.add_spend(key.user_id, now, call.cost, key.key_id, key.project_id)
