"""The mock upstream's aiohttp application: OpenAI chat completions and embeddings, Anthropic
messages, the Responses API (gateway.mock_upstream.responses), failures and request recording."""

import asyncio
import json
import math
import socket
import time

from aiohttp import web

from gateway.mock_upstream.counts import BILLED_WEB_SEARCHES, BILLED_WRITES_1H, BILLED_WRITES_5M, counts, words
from gateway.mock_upstream.responses import ResponsesMock
from gateway.providers import text_of

# What the `huge-usage` model reports as its prompt's tokens: past 64 bits, as a broken (or
# hostile) upstream might; the gateway must not believe it.
HUGE_TOKENS = 2**63 + 7
# Chat completions answers carry a cookie, as real upstreams behind a load balancer may (the
# gateway must never pass it on to its callers), and rate-limit and processing headers spelt as
# upstreams spell them (the gateway passes those on).
CHAT_HEADERS = {"set-cookie": "mock_session=abc; Path=/", "X-Ratelimit-Remaining-Requests": "499",
                "OpenAI-Processing-MS": "7"}


def served_tier(model: str) -> str | None:
    """The service tier a `billed-<tier>` model answers with (None for any other model)."""
    return model.removeprefix("billed-") if model.startswith("billed-") and model != "billed-fast" else None


class MockUpstream(ResponsesMock):
    def __init__(self, delay_ms: int = 0, chunk_delay_ms: int = 0):
        self.delay = delay_ms / 1000
        self.chunk_delay = chunk_delay_ms / 1000
        self.seen: list[dict] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        openai, anthropic = self._openai_error, self._anthropic_error
        for path, answer, error_body, streams in (
                ("/v1/chat/completions", self.chat, openai, True),
                ("/v1/embeddings", self.embeddings, openai, False),
                ("/v1/responses", self.responses, openai, True),
                ("/v1/responses/input_tokens", self.responses_input_tokens, openai, False),
                ("/v1/responses/compact", self.responses_compact, openai, False),
                ("/v1/messages", self.messages, anthropic, True),
                ("/v1/messages/count_tokens", self.messages_count_tokens, anthropic, False)):
            app.router.add_post(path, self._model_route(answer, error_body, streams))
        app.router.add_get("/_mock/requests", self.list_requests)
        app.router.add_delete("/_mock/requests", self.clear_requests)
        app.router.add_get("/healthz", self.health)
        return app

    def _model_route(self, answer, error_body, streams: bool):
        """The handler of a route that names a model: the request is recorded, then answered with the
        failure its model names, else by `answer(request, body, model, stream)`."""

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await self._begin(request)
            model, stream = body.get("model", ""), streams and body.get("stream") is True
            failure = await self._failure(request, model, stream, error_body)
            return failure if failure is not None else await answer(request, body, model, stream)

        return handle

    async def _begin(self, request: web.Request) -> dict:
        body = await request.json()
        self.seen = self.seen[-999:] + [{"path": request.path, "headers": dict(request.headers), "body": body}]
        if self.delay:
            await asyncio.sleep(self.delay)
        return body

    async def health(self, request):
        return web.json_response({"status": "ok"})

    async def list_requests(self, request):
        return web.json_response(self.seen)

    async def clear_requests(self, request):
        self.seen = []
        return web.json_response({"cleared": True})

    # --- failures shared by both protocols ------------------------------------------------

    async def _failure(self, request, model: str, stream: bool, error_body) -> web.StreamResponse | None:
        if model == "fail-500":
            return web.json_response(error_body(500), status=500)
        if model == "fail-429":
            return web.json_response(error_body(429), status=429)
        if model == "fail-timeout":
            await asyncio.sleep(60)
        if model == "fail-drop" and not stream:
            request.transport.close()
            return web.Response()  # never reaches the closed connection
        return None

    # --- OpenAI -----------------------------------------------------------------------------

    @staticmethod
    def _openai_error(status: int) -> dict:
        kind = "rate_limit_exceeded" if status == 429 else None
        return {"error": {"message": f"Mock upstream error {status}", "type": "server_error" if status >= 500
                          else "requests", "param": None, "code": kind}}

    @staticmethod
    def _openai_usage(prompt_tokens: int, completion_tokens: int) -> dict:
        cached = prompt_tokens // 2 if prompt_tokens >= 64 else 0
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    async def chat(self, request: web.Request, body: dict, model: str, stream: bool) -> web.StreamResponse:
        prompt_tokens, completion_tokens, reply = counts(text_of(body.get("messages", "")), model)
        usage = None if model == "no-usage" else self._openai_usage(prompt_tokens, completion_tokens)
        if model == "huge-usage":
            usage["prompt_tokens"] = HUGE_TOKENS
        base = {"id": f"chatcmpl-mock{int(time.time() * 1000)}", "created": int(time.time()),
                "model": f"{model}-2024-07-18", "system_fingerprint": "fp_mock",
                "service_tier": served_tier(model) or "default"}
        if not stream:
            message = {"role": "assistant", "content": reply, "refusal": None, "annotations": []}
            data = {**base, "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]}
            if usage is not None:
                data["usage"] = usage
            return web.json_response(data, headers=CHAT_HEADERS)
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": "req_mock",
                                               **CHAT_HEADERS})
        await response.prepare(request)

        def chunk(delta, finish=None, choices=True):
            data = {**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices
                    else []}
            if include_usage:
                data["usage"] = None
            return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": w}) for w in words(reply)]
        for index, event in enumerate(events):
            await response.write(event)
            if model == "fail-drop" and index == 2:
                request.transport.close()
                return response
            if model == "stream-error" and index == 2:
                error = {"error": {"message": "The server had an error while processing your request.",
                                   "type": "server_error", "param": None, "code": None}}
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write(chunk({}, finish="stop"))
        if include_usage and usage is not None:
            final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await response.write(b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def embeddings(self, request: web.Request, body: dict, model: str, stream: bool) -> web.StreamResponse:
        inputs = body.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt_tokens = sum(math.ceil(len(text_of(i) if not isinstance(i, int) else "1") / 4) for i in items) or 1
        data = {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.0125 * (i + 1), -0.5, 0.25, 0.0]}
                         for i in range(len(items))]}
        if model != "no-usage":
            data["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return web.json_response(data)

    # --- Anthropic --------------------------------------------------------------------------

    @staticmethod
    def _anthropic_error(status: int) -> dict:
        kind = "rate_limit_error" if status == 429 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": f"Mock upstream error {status}"}}

    @staticmethod
    def _anthropic_usage(prompt_tokens: int, output_tokens: int, model: str = "") -> dict:
        if model.startswith("billed"):
            reads, writes = prompt_tokens // 4, BILLED_WRITES_5M + BILLED_WRITES_1H
            return {"input_tokens": prompt_tokens - reads - writes, "cache_creation_input_tokens": writes,
                    "cache_read_input_tokens": reads,
                    "cache_creation": {"ephemeral_5m_input_tokens": BILLED_WRITES_5M,
                                       "ephemeral_1h_input_tokens": BILLED_WRITES_1H},
                    "output_tokens": output_tokens, "output_tokens_details": {"thinking_tokens": output_tokens // 2},
                    "server_tool_use": {"web_search_requests": BILLED_WEB_SEARCHES, "web_fetch_requests": 1},
                    "service_tier": served_tier(model) or "standard",
                    "speed": "fast" if model == "billed-fast" else "standard"}
        if prompt_tokens < 64:
            return {"input_tokens": prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "output_tokens": output_tokens}
        reads, writes = prompt_tokens // 4, 8
        return {"input_tokens": prompt_tokens - reads - writes, "cache_creation_input_tokens": writes,
                "cache_read_input_tokens": reads, "output_tokens": output_tokens}

    async def messages(self, request: web.Request, body: dict, model: str, stream: bool) -> web.StreamResponse:
        prompt = text_of(body.get("system", "")) + text_of(body.get("messages", ""))
        prompt_tokens, output_tokens, reply = counts(prompt, model)
        usage = self._anthropic_usage(prompt_tokens, output_tokens, model)
        if model == "huge-usage":
            usage["input_tokens"] = HUGE_TOKENS
        message_id = f"msg_mock{int(time.time() * 1000)}"
        if not stream:
            data = {"id": message_id, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None}
            if model != "no-usage":
                data["usage"] = {"service_tier": "standard", **usage}
            return web.json_response(data)
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "request-id": "req_mock"})
        await response.prepare(request)

        async def event(name: str, data: dict):
            await response.write(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        start_usage = {**usage, "output_tokens": 1}
        start_usage.pop("output_tokens_details", None)  # message_start: counts so far, no details yet
        message = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None}
        if model != "no-usage":
            message["usage"] = start_usage
        await event("message_start", {"type": "message_start", "message": message})
        await event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
        await event("ping", {"type": "ping"})
        for index, word in enumerate(words(reply)):
            await event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": word}})
            if model == "fail-drop" and index == 1:
                request.transport.close()
                return response
            if model == "stream-error" and index == 1:
                await event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        if model != "no-usage":  # cumulative counts: no cache_creation, service tier or speed here
            delta["usage"] = {k: v for k, v in usage.items() if k not in ("cache_creation", "service_tier", "speed")}
        await event("message_delta", delta)
        await event("message_stop", {"type": "message_stop"})
        return response

    async def messages_count_tokens(self, request: web.Request, body: dict, model: str,
                                    stream: bool) -> web.StreamResponse:
        prompt_tokens, _, _ = counts(text_of(body.get("system", "")) + text_of(body.get("messages", "")), model)
        return web.json_response({"input_tokens": prompt_tokens})


def run(port: int, host: str = "127.0.0.1", delay_ms: int = 0, chunk_delay_ms: int = 0,
        sock: socket.socket | None = None) -> None:
    """Serve on host:port, or on `sock` (a listening socket) when given."""
    where = {"sock": sock} if sock is not None else {"host": host, "port": port}
    web.run_app(MockUpstream(delay_ms, chunk_delay_ms).app(), **where, access_log=None, print=lambda *args: None)
