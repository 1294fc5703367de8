"""OpenAI Responses API wire format (`POST /v1/responses`): usage, model renaming, streams.

The same interface as gateway.providers.openai, so the gateway can use either for an `openai` facade.

Usage is the `usage` object of the final Response: `input_tokens` counts every prompt token (of
which `input_tokens_details.cached_tokens` were cache reads and `cache_write_tokens` cache writes,
`cache_write_tokens_details.ttl_12h_tokens` of them kept 12 hours, the extended retention) and
`output_tokens` every output token (of which `output_tokens_details.reasoning_tokens` were
reasoning). Server-side tool calls, billed per call, are the `web_search_call` and
`file_search_call` items of the final Response's `output`; only a stream cut before its final
Response counts the `response.output_item.done` items it saw (never both). The Response's
`service_tier` is the tier that served it. The API always reports it, streams included (no `stream_options` to ask for it): a
stream carries it in the `response` object of its last event, `response.completed`,
`response.incomplete` (a normal answer cut at a limit) or `response.failed`. There is no `[DONE]`.

The model is renamed on the bytes, never by re-encoding the JSON: in a whole Response its
top-level `model`, in a stream the `model` of the `response` object that the `response.created`,
`response.in_progress`, `response.completed`, `response.incomplete` and `response.failed` events
carry. Every other event passes through byte for byte.
"""

from gateway.providers import (ReportedUsageStream, Unsupported, Usage, estimate_tokens, event_of, int_field,
                                rename_top_model, renamed_body, str_field, trusted)
from gateway.providers.openai import auth_headers, error_body, models_list  # noqa: F401 (same as Chat Completions)

NAME = "openai"

# Events carrying a whole Response object in `response`.
RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.completed",
                             "response.incomplete", "response.failed"})
# Events whose `delta` is output the estimate counts when no usage is reported.
TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta",
                         "response.function_call_arguments.delta"})
# Output items of server-side tools billed per call.
TOOL_CALLS = ("web_search_call", "file_search_call")
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def prepare_request(body: dict, upstream_model: str, stream: bool) -> tuple[dict, bool]:
    """The body to send upstream (only the model changes), and False: usage needs no asking for.

    Background responses are refused: their usage arrives only when the caller polls for the
    result, which the gateway would have to follow to count it."""
    if body.get("background") is True:
        raise Unsupported("Background responses (\"background\": true) are not supported through the gateway: "
                          "their usage is known only when polled, so they could not be counted. "
                          "Send the request without \"background\", streaming if it is long.", param="background")
    return {**body, "model": upstream_model}, False


def _text(value) -> str:
    """The text of input or output items: strings, content parts (`text`, `refusal`), function
    call `arguments` and function call `output`s, in lists and messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(item) for item in value)
    if isinstance(value, dict):
        for key in ("text", "refusal", "arguments"):
            if isinstance(value.get(key), str):
                return value[key]
        return _text(value.get("content", "")) + _text(value.get("output", ""))
    return ""


def prompt_text(body: dict) -> str:
    """The prompt of a request, for estimates: `instructions` and `input` (a string or items)."""
    return _text(body.get("instructions", "")) + _text(body.get("input", ""))


def output_text(body: dict) -> str:
    """The output of a whole Response, for estimates: the text of its `output` items."""
    return _text(body.get("output", []))


def usage_from(usage) -> Usage | None:
    """Usage from a Response's `usage` object; None when there is none (null before the end)."""
    if not isinstance(usage, dict):
        return None
    prompt = int_field(usage, "input_tokens")
    cached = min(int_field(usage, "input_tokens_details", "cached_tokens"), prompt)
    writes = min(int_field(usage, "input_tokens_details", "cache_write_tokens"), prompt - cached)
    extended = min(int_field(usage, "input_tokens_details", "cache_write_tokens_details", "ttl_12h_tokens"), writes)
    output = int_field(usage, "output_tokens")
    reasoning = min(int_field(usage, "output_tokens_details", "reasoning_tokens"), output)
    return Usage(input_tokens=prompt, cached_input_tokens=cached, cache_write_tokens=writes,
                 cache_write_extended_tokens=extended, output_tokens=output, reasoning_tokens=reasoning)


def tool_calls(items) -> tuple[int, int]:
    """(web searches, file searches) among a Response's output items."""
    if not isinstance(items, list):
        return 0, 0
    kinds = [item.get("type") for item in items if isinstance(item, dict)]
    return kinds.count("web_search_call"), kinds.count("file_search_call")


def billed(usage: Usage, response: dict, calls: tuple[int, int]) -> Usage:
    """`usage` with what else the Response bills: its tool calls and the tier that served it."""
    usage.web_search_calls, usage.file_search_calls = calls
    usage.service_tier = str_field(response, "service_tier")
    return usage


def finish_response(raw: bytes, public_model: str, request_body: dict) -> tuple[bytes, Usage]:
    """Rename the model in a whole Response and read its usage, estimated if absent (ValueError if
    the answer is not JSON). The bytes returned are the upstream's, only the model renamed."""
    body, raw = renamed_body(raw, public_model)
    if not isinstance(body, dict):
        body = {}
    usage = trusted(usage_from, body.get("usage"), public_model)
    if usage is None:
        usage = Usage(input_tokens=estimate_tokens(prompt_text(request_body)),
                      output_tokens=estimate_tokens(output_text(body)), estimated=True)
    return raw, billed(usage, body, tool_calls(body.get("output")))


class StreamState(ReportedUsageStream):
    """Follows a Responses stream event by event: usage, text so far, errors, the end."""

    prompt_text = staticmethod(prompt_text)

    def __init__(self, public_model: str, caller_wants_usage: bool, request_body: dict):
        super().__init__(public_model, caller_wants_usage, request_body)
        self.seen_calls = [0, 0]  # web and file searches of the output_item.done events so far
        self.final_calls: tuple[int, int] | None = None  # those of the final Response, which win

    def usage(self) -> Usage:
        usage = super().usage()
        usage.web_search_calls, usage.file_search_calls = self.final_calls or self.seen_calls
        return usage

    def process(self, raw: bytes, name: str | None, data: str) -> bytes | None:
        """The bytes to send the caller for this event (never hidden: usage is part of the API)."""
        event = event_of(data)
        if event is None:
            return raw
        kind = event["type"] if isinstance(event.get("type"), str) else name
        if kind in TEXT_DELTAS:
            if isinstance(event.get("delta"), str):
                self.text.append(event["delta"])
        elif kind == "response.output_item.done":
            item = event.get("item")
            kind_of_item = item.get("type") if isinstance(item, dict) else None
            if kind_of_item in TOOL_CALLS:
                self.seen_calls[TOOL_CALLS.index(kind_of_item)] += 1
        elif kind in RESPONSE_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                self.report(usage_from, response.get("usage"))
                self.service_tier = str_field(response, "service_tier") or self.service_tier
                if kind in FINAL_EVENTS:
                    self.final_calls = tool_calls(response.get("output"))
                if isinstance(response.get("model"), str):
                    raw = rename_top_model(raw, response["model"], self.public_model, depth=2)
            if kind == "response.failed":
                self.done = self.error = True
            elif kind in ("response.completed", "response.incomplete"):
                self.done = True
        elif kind == "error":
            self.error = True
        return raw
