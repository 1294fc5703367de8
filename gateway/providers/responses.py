"""OpenAI Responses API wire format (`POST /v1/responses`): usage, model renaming, streams.

The same interface as gateway.providers.openai, so the gateway can use either for an `openai` facade.

Usage is the `usage` object of the final Response: `input_tokens` counts every prompt token (of
which `input_tokens_details.cached_tokens` were cache reads and `cache_write_tokens` cache writes)
and `output_tokens` every output token (of which `output_tokens_details.reasoning_tokens` were
reasoning). The API always reports it, streams included (no `stream_options` to ask for it): a
stream carries it in the `response` object of its last event, `response.completed`,
`response.incomplete` (a normal answer cut at a limit) or `response.failed`. There is no `[DONE]`.

The model is renamed on the bytes, never by re-encoding the JSON: in a whole Response its
top-level `model`, in a stream the `model` of the `response` object that the `response.created`,
`response.in_progress`, `response.completed`, `response.incomplete` and `response.failed` events
carry. Every other event passes through byte for byte.
"""

from gateway.providers import (ReportedUsageStream, Unsupported, Usage, estimate_tokens, event_of, int_field,
                                rename_top_model, renamed_body, trusted)
from gateway.providers.openai import auth_headers, error_body, models_list  # noqa: F401 (same as Chat Completions)

NAME = "openai"

# Events carrying a whole Response object in `response`.
RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.completed",
                             "response.incomplete", "response.failed"})
# Events whose `delta` is output the estimate counts when no usage is reported.
TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta",
                         "response.function_call_arguments.delta"})


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
    output = int_field(usage, "output_tokens")
    reasoning = min(int_field(usage, "output_tokens_details", "reasoning_tokens"), output)
    return Usage(input_tokens=prompt, cached_input_tokens=cached, cache_write_tokens=writes, output_tokens=output,
                 reasoning_tokens=reasoning)


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
    return raw, usage


class StreamState(ReportedUsageStream):
    """Follows a Responses stream event by event: usage, text so far, errors, the end."""

    prompt_text = staticmethod(prompt_text)

    def process(self, raw: bytes, name: str | None, data: str) -> bytes | None:
        """The bytes to send the caller for this event (never hidden: usage is part of the API)."""
        event = event_of(data)
        if event is None:
            return raw
        kind = event["type"] if isinstance(event.get("type"), str) else name
        if kind in TEXT_DELTAS:
            if isinstance(event.get("delta"), str):
                self.text.append(event["delta"])
        elif kind in RESPONSE_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                self.report(usage_from, response.get("usage"))
                if isinstance(response.get("model"), str):
                    raw = rename_top_model(raw, response["model"], self.public_model, depth=2)
            if kind == "response.failed":
                self.done = self.error = True
            elif kind in ("response.completed", "response.incomplete"):
                self.done = True
        elif kind == "error":
            self.error = True
        return raw
