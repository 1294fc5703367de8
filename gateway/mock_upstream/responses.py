"""The mock upstream's OpenAI Responses API (see gateway.mock_upstream)."""

import asyncio
import json
import math
import time

from aiohttp import web

from gateway.mock_upstream.counts import (BILLED_FILE_SEARCHES, BILLED_WEB_SEARCHES, BILLED_WRITES_1H,
                                          BILLED_WRITES_5M, counts, words)
from gateway.providers import text_of

REASONING_TOKENS = 16  # reported by the Responses API mock, part of its output tokens


class ResponsesMock:
    """`POST /v1/responses` (whole or streamed), `/v1/responses/input_tokens`, `/v1/responses/compact`.
    Mixed into MockUpstream, which routes the requests to them once recorded and not failed."""

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
        return text_of(body.get("instructions", "")) + text_of(body.get("input", ""))

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

    async def responses(self, request: web.Request, body: dict, model: str, stream: bool) -> web.StreamResponse:
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
            usage = self._responses_usage(prompt_tokens, math.ceil(len(text) / 4) + REASONING_TOKENS)
            if model == "billed":  # cache writes of both retentions, beside the cached reads
                usage["input_tokens_details"].update(
                    cache_write_tokens=BILLED_WRITES_5M + BILLED_WRITES_1H,
                    cache_write_tokens_details={"ttl_30m_tokens": BILLED_WRITES_5M, "ttl_12h_tokens": BILLED_WRITES_1H})
            return usage

        # The `billed` model's server-side tool calls, before its message.
        tools = [{"id": f"ws_mock{i}", "type": "web_search_call", "status": "completed",
                  "action": {"type": "search", "query": "exact billing"}} for i in range(BILLED_WEB_SEARCHES)]
        tools += [{"id": f"fs_mock{i}", "type": "file_search_call", "status": "completed", "queries": ["billing"],
                   "results": None} for i in range(BILLED_FILE_SEARCHES)]
        tools = tools if model == "billed" else []

        def part(text: str) -> dict:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def item(status: str, content: list) -> dict:
            return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}

        def response_object(status: str, output: list, usage, **details) -> dict:
            data = self._response(body, response_id, created, upstream_model, status, tools + output if output else [],
                                  usage, **details)
            if model == "billed":
                data["service_tier"] = "priority"
            return data

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
        for index, tool in enumerate(tools):
            await event("response.output_item.added", output_index=index, item={**tool, "status": "in_progress"})
            await event("response.output_item.done", output_index=index, item=tool)
        await event("response.output_item.added", output_index=len(tools), item=item("in_progress", []))
        place = {"item_id": item_id, "output_index": len(tools), "content_index": 0}
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
        await event("response.output_item.done", output_index=len(tools), item=item(status, [part(text)]))
        final = [item(status, [part(text)])]
        if model == "incomplete":
            await event("response.incomplete", response=response_object(
                "incomplete", final, usage_for(text), incomplete={"reason": "max_output_tokens"}))
        else:
            await event("response.completed", response=response_object("completed", final, usage_for(text)))
        return response

    async def responses_input_tokens(self, request: web.Request, body: dict, model: str,
                                     stream: bool) -> web.StreamResponse:
        prompt_tokens, _, _ = counts(self._responses_prompt(body), model)
        return web.json_response({"object": "response.input_tokens", "input_tokens": prompt_tokens})

    async def responses_compact(self, request: web.Request, body: dict, model: str,
                                stream: bool) -> web.StreamResponse:
        """A compacted conversation: the input's user messages, then one opaque compaction item."""
        prompt_tokens, _, _ = counts(self._responses_prompt(body), model)
        stamp = int(time.time() * 1000)
        items = body.get("input")
        if not isinstance(items, list):
            items = [{"role": "user", "content": items}]
        output = [{"id": f"msg_mock{stamp}_{index}", "type": "message", "status": "completed", "role": "user",
                   "content": [{"type": "input_text", "text": text_of(message.get("content", ""))}]}
                  for index, message in enumerate(items) if isinstance(message, dict) and message.get("role") == "user"]
        output.append({"id": f"cmp_mock{stamp}", "type": "compaction", "encrypted_content": "gAAAAABmock-compaction=="})
        data = {"id": f"resp_mock{stamp}", "object": "response.compaction", "created_at": int(time.time()),
                "output": output}
        if model != "no-usage":
            data["usage"] = self._responses_usage(prompt_tokens, REASONING_TOKENS + 8)
        return web.json_response(data)
