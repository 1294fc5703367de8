"""A fake OpenAI- and Anthropic-shaped model server for the demo, the tests and the benchmarks.

Responses follow the public API references (and tests/support/wire/): OpenAI chunks carry
`"usage": null` until a final usage chunk, sent only when `stream_options.include_usage` is
asked for, then `data: [DONE]`; Anthropic streams carry `ping`, input and cache counts in
`message_start` and cumulative counts in `message_delta`.

Routes: OpenAI `POST /v1/chat/completions`, `/v1/embeddings`, `/v1/responses` (whole or
streamed), `/v1/responses/input_tokens` and `/v1/responses/compact`; Anthropic `POST /v1/messages`
and `/v1/messages/count_tokens`.

The Responses API (`/v1/responses`) answers a Response object (`"object": "response"`, the model
as a dated snapshot name like the chat mock's) with one message item; a stream sends
`event: <type>` / `data: <json>` events numbered by `sequence_number` from 0:
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, `response.completed` (which carries
the usage), and no `[DONE]`. Its output tokens include 16 reasoning tokens
(`output_tokens_details.reasoning_tokens`) on top of the reply's, so a consumer that ignores the
details still counts them. `/v1/responses/compact` answers a `response.compaction` object (the
input's user messages, then one compaction item) with the prompt's usage and 24 output tokens, 16
of them reasoning. `/v1/responses/input_tokens` and `/v1/messages/count_tokens` answer the input
tokens the same prompt would report.

Usage is deterministic, from the prompt's length:
  prompt tokens = 10 + ceil(len(prompt text) / 4); half of them cached once there are 64 or more
  (Anthropic: a quarter cache reads, 8 cache writes, the rest plain input); output tokens =
  ceil(len(reply) / 4), the reply being "Mock reply from <model>: <first 40 characters of the prompt>".

The upstream model name picks a failure, so a facade can be pointed at one:
  fail-500        an error status (500) with the provider's error body
  fail-429        a 429 with the provider's error body
  fail-timeout    no answer for 60 seconds
  fail-drop       the connection dropped (mid-stream for streams)
  no-usage        no usage anywhere in the response
  stream-error    a stream that ends in an error event (Responses API: a `response.failed` event
                  carrying the response, status "failed", an `error` object and the usage so far)
  incomplete      Responses API only: the reply cut at half its words, status "incomplete" with
                  `incomplete_details: {"reason": "max_output_tokens"}` and usage; a stream ends in
                  `response.incomplete`

Chat completions answers (whole or streamed) carry `set-cookie: mock_session=abc; Path=/`, which
the gateway must not pass on.

GET /_mock/requests lists the requests seen (path, headers, body); DELETE clears the list.
"""

import asyncio
import json
import math
import time

from aiohttp import web

FAILURES = ("fail-500", "fail-429", "fail-timeout", "fail-drop", "no-usage", "stream-error", "incomplete")
REASONING_TOKENS = 16  # reported by the Responses API mock, part of its output tokens
# Chat completions answers carry a cookie, as real upstreams behind a load balancer may: the
# gateway must never pass it on to its callers.
CHAT_HEADERS = {"set-cookie": "mock_session=abc; Path=/"}


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    if isinstance(value, dict):
        return value["text"] if isinstance(value.get("text"), str) else _text(value.get("content", ""))
    return ""


def counts(prompt: str, model: str) -> tuple[int, int, str]:
    prompt_tokens = 10 + math.ceil(len(prompt) / 4)
    reply = f"Mock reply from {model}: {prompt[:40]}"
    return prompt_tokens, math.ceil(len(reply) / 4), reply


def words(reply: str) -> list[str]:
    parts = reply.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]


class MockUpstream:
    def __init__(self, delay_ms: int = 0, chunk_delay_ms: int = 0):
        self.delay = delay_ms / 1000
        self.chunk_delay = chunk_delay_ms / 1000
        self.seen: list[dict] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/responses/input_tokens", self.responses_input_tokens)
        app.router.add_post("/v1/responses/compact", self.responses_compact)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.messages_count_tokens)
        app.router.add_get("/_mock/requests", self.list_requests)
        app.router.add_delete("/_mock/requests", self.clear_requests)
        app.router.add_get("/healthz", self.health)
        return app

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

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        model, stream = body.get("model", ""), body.get("stream") is True
        failure = await self._failure(request, model, stream, self._openai_error)
        if failure is not None:
            return failure
        prompt_tokens, completion_tokens, reply = counts(_text(body.get("messages", "")), model)
        usage = None if model == "no-usage" else self._openai_usage(prompt_tokens, completion_tokens)
        base = {"id": f"chatcmpl-mock{int(time.time() * 1000)}", "created": int(time.time()),
                "model": f"{model}-2024-07-18", "system_fingerprint": "fp_mock"}
        if not stream:
            message = {"role": "assistant", "content": reply, "refusal": None, "annotations": []}
            data = {**base, "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                    "service_tier": "default"}
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

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        model = body.get("model", "")
        failure = await self._failure(request, model, False, self._openai_error)
        if failure is not None:
            return failure
        inputs = body.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        prompt_tokens = sum(math.ceil(len(_text(i) if not isinstance(i, int) else "1") / 4) for i in items) or 1
        data = {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.0125 * (i + 1), -0.5, 0.25, 0.0]}
                         for i in range(len(items))]}
        if model != "no-usage":
            data["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return web.json_response(data)

    # --- OpenAI Responses API -------------------------------------------------------------

    @staticmethod
    def _responses_usage(prompt_tokens: int, output_tokens: int, reasoning_tokens: int = REASONING_TOKENS) -> dict:
        """`output_tokens` includes `reasoning_tokens`, as the API counts them."""
        cached = prompt_tokens // 2 if prompt_tokens >= 64 else 0
        return {"input_tokens": prompt_tokens,
                "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                "total_tokens": prompt_tokens + output_tokens}

    @staticmethod
    def _responses_prompt(body: dict) -> str:
        return _text(body.get("instructions", "")) + _text(body.get("input", ""))

    @staticmethod
    def _response(body: dict, response_id: str, created: int, model: str, status: str, output: list, usage,
                  error=None, incomplete=None) -> dict:
        instructions = body.get("instructions") if isinstance(body.get("instructions"), str) else None
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        previous = body.get("previous_response_id") if isinstance(body.get("previous_response_id"), str) else None
        limit = body.get("max_output_tokens") if type(body.get("max_output_tokens")) is int else None
        return {"id": response_id, "object": "response", "created_at": created, "status": status,
                "background": False, "error": error, "incomplete_details": incomplete, "instructions": instructions,
                "max_output_tokens": limit, "max_tool_calls": None, "model": model, "output": output,
                "parallel_tool_calls": True, "previous_response_id": previous,
                "reasoning": {"effort": "medium", "summary": None}, "service_tier": "default",
                "store": body.get("store") is not False, "temperature": 1.0,
                "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto", "tools": [],
                "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": None,
                "metadata": metadata}

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        model, stream = body.get("model", ""), body.get("stream") is True
        failure = await self._failure(request, model, stream, self._openai_error)
        if failure is not None:
            return failure
        prompt_tokens, _, reply = counts(self._responses_prompt(body), model)
        pieces = words(reply)
        if model == "incomplete":
            pieces = pieces[: max(1, len(pieces) // 2)]
        stamp = int(time.time() * 1000)
        response_id, item_id, created = f"resp_mock{stamp}", f"msg_mock{stamp}", int(time.time())
        upstream_model = f"{model}-2025-08-07"

        def usage_for(text: str):
            if model == "no-usage":
                return None
            return self._responses_usage(prompt_tokens, math.ceil(len(text) / 4) + REASONING_TOKENS)

        def part(text: str) -> dict:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def item(status: str, content: list) -> dict:
            return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}

        def response_object(status: str, output: list, usage, **details) -> dict:
            return self._response(body, response_id, created, upstream_model, status, output, usage, **details)

        if not stream:
            text = "".join(pieces)
            if model == "incomplete":
                data = response_object("incomplete", [item("incomplete", [part(text)])], usage_for(text),
                                       incomplete={"reason": "max_output_tokens"})
            else:
                data = response_object("completed", [item("completed", [part(text)])], usage_for(text))
            return web.json_response(data)

        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": "req_mock"})
        await response.prepare(request)
        sequence = 0

        async def event(kind: str, **fields):
            nonlocal sequence
            data = {"type": kind, "sequence_number": sequence, **fields}
            sequence += 1
            await response.write(f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        await event("response.created", response=response_object("in_progress", [], None))
        await event("response.in_progress", response=response_object("in_progress", [], None))
        await event("response.output_item.added", output_index=0, item=item("in_progress", []))
        place = {"item_id": item_id, "output_index": 0, "content_index": 0}
        await event("response.content_part.added", **place, part=part(""))
        text = ""
        for index, piece in enumerate(pieces):
            await event("response.output_text.delta", **place, delta=piece, logprobs=[])
            text += piece
            if model == "fail-drop" and index == 1:
                request.transport.close()
                return response
            if model == "stream-error" and index == 1:
                error = {"code": "server_error", "message": "The server had an error while processing your request."}
                await event("response.failed", response=response_object(
                    "failed", [item("incomplete", [part(text)])], usage_for(text), error=error))
                return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        status = "incomplete" if model == "incomplete" else "completed"
        await event("response.output_text.done", **place, text=text, logprobs=[])
        await event("response.content_part.done", **place, part=part(text))
        await event("response.output_item.done", output_index=0, item=item(status, [part(text)]))
        final = [item(status, [part(text)])]
        if model == "incomplete":
            await event("response.incomplete", response=response_object(
                "incomplete", final, usage_for(text), incomplete={"reason": "max_output_tokens"}))
        else:
            await event("response.completed", response=response_object("completed", final, usage_for(text)))
        return response

    async def responses_input_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        failure = await self._failure(request, body.get("model", ""), False, self._openai_error)
        if failure is not None:
            return failure
        prompt_tokens, _, _ = counts(self._responses_prompt(body), body.get("model", ""))
        return web.json_response({"object": "response.input_tokens", "input_tokens": prompt_tokens})

    async def responses_compact(self, request: web.Request) -> web.StreamResponse:
        """A compacted conversation: the input's user messages, then one opaque compaction item."""
        body = await self._begin(request)
        model = body.get("model", "")
        failure = await self._failure(request, model, False, self._openai_error)
        if failure is not None:
            return failure
        prompt_tokens, _, _ = counts(self._responses_prompt(body), model)
        stamp = int(time.time() * 1000)
        items = body.get("input")
        if not isinstance(items, list):
            items = [{"role": "user", "content": items}]
        output = [{"id": f"msg_mock{stamp}_{index}", "type": "message", "status": "completed", "role": "user",
                   "content": [{"type": "input_text", "text": _text(message.get("content", ""))}]}
                  for index, message in enumerate(items) if isinstance(message, dict) and message.get("role") == "user"]
        output.append({"id": f"cmp_mock{stamp}", "type": "compaction", "encrypted_content": "gAAAAABmock-compaction=="})
        data = {"id": f"resp_mock{stamp}", "object": "response.compaction", "created_at": int(time.time()),
                "output": output}
        if model != "no-usage":
            data["usage"] = self._responses_usage(prompt_tokens, REASONING_TOKENS + 8)
        return web.json_response(data)

    # --- Anthropic --------------------------------------------------------------------------

    @staticmethod
    def _anthropic_error(status: int) -> dict:
        kind = "rate_limit_error" if status == 429 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": f"Mock upstream error {status}"}}

    @staticmethod
    def _anthropic_usage(prompt_tokens: int, output_tokens: int) -> dict:
        if prompt_tokens < 64:
            return {"input_tokens": prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "output_tokens": output_tokens}
        reads, writes = prompt_tokens // 4, 8
        return {"input_tokens": prompt_tokens - reads - writes, "cache_creation_input_tokens": writes,
                "cache_read_input_tokens": reads, "output_tokens": output_tokens}

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        model, stream = body.get("model", ""), body.get("stream") is True
        failure = await self._failure(request, model, stream, self._anthropic_error)
        if failure is not None:
            return failure
        prompt = _text(body.get("system", "")) + _text(body.get("messages", ""))
        prompt_tokens, output_tokens, reply = counts(prompt, model)
        usage = self._anthropic_usage(prompt_tokens, output_tokens)
        message_id = f"msg_mock{int(time.time() * 1000)}"
        if not stream:
            data = {"id": message_id, "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None}
            if model != "no-usage":
                data["usage"] = {**usage, "service_tier": "standard"}
            return web.json_response(data)
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "request-id": "req_mock"})
        await response.prepare(request)

        async def event(name: str, data: dict):
            await response.write(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        start_usage = {**usage, "output_tokens": 1}
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
        if model != "no-usage":
            delta["usage"] = usage
        await event("message_delta", delta)
        await event("message_stop", {"type": "message_stop"})
        return response

    async def messages_count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin(request)
        model = body.get("model", "")
        failure = await self._failure(request, model, False, self._anthropic_error)
        if failure is not None:
            return failure
        prompt_tokens, _, _ = counts(_text(body.get("system", "")) + _text(body.get("messages", "")), model)
        return web.json_response({"input_tokens": prompt_tokens})


def run(port: int, host: str = "127.0.0.1", delay_ms: int = 0, chunk_delay_ms: int = 0) -> None:
    web.run_app(MockUpstream(delay_ms, chunk_delay_ms).app(), host=host, port=port, access_log=None,
                print=lambda *args: None)
