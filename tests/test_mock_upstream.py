"""The mock upstream speaks the real wire shapes: its answers have the fixtures' keys and parse
with the official SDKs' types."""

import json
import urllib.request

from anthropic.types import Message, RawMessageStreamEvent
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from tests.support.fixtures import events, raw

PROMPT = [{"role": "user", "content": "Describe the mock upstream in some detail, please. " * 6}]


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def sse(data: bytes):
    from gateway.providers import SSEReader

    return [(name, payload) for _, name, payload in SSEReader().feed(data)]


def keys(value):
    """The nested key structure of a JSON value (lists by their first item)."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list) and value:
        return [keys(value[0])]
    return None


def covers(mine, theirs):
    """Every key of the fixture is in the mock's answer, at the same place."""
    if isinstance(theirs, dict):
        return isinstance(mine, dict) and all(k in mine and covers(mine[k], v) for k, v in theirs.items())
    if isinstance(theirs, list):
        return isinstance(mine, list) and (not mine or covers(mine[0], theirs[0]))
    return True


def test_chat_completions_match_the_fixture(mock_upstream):
    body = json.loads(post(f"{mock_upstream.url}/v1/chat/completions", {"model": "gpt-4o-mini", "messages": PROMPT}))
    assert covers(keys(body), keys(json.loads(raw("openai-chat.json"))))
    completion = ChatCompletion.model_validate(body)
    assert completion.usage.prompt_tokens_details.cached_tokens == completion.usage.prompt_tokens // 2


def test_chat_streams_match_the_fixtures_with_and_without_include_usage(mock_upstream):
    url = f"{mock_upstream.url}/v1/chat/completions"
    with_usage = sse(post(url, {"model": "m", "messages": PROMPT, "stream": True,
                                "stream_options": {"include_usage": True}}))
    fixture = [json.loads(d) for _, _, d in events("openai-chat-stream-include-usage.sse") if d != "[DONE]"]
    chunks = [json.loads(d) for _, d in with_usage if d != "[DONE]"]
    assert with_usage[-1][1] == "[DONE]"
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["choices"] == [] and chunks[-1]["usage"]
    assert covers(keys(chunks[-1]), keys(fixture[-1])) and covers(keys(chunks[1]), keys(fixture[1]))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    plain = [json.loads(d) for _, d in sse(post(url, {"model": "m", "messages": PROMPT, "stream": True})) if d != "[DONE]"]
    assert all("usage" not in c and c["choices"] for c in plain)


def test_embeddings_match_the_fixture(mock_upstream):
    body = json.loads(post(f"{mock_upstream.url}/v1/embeddings", {"model": "e", "input": ["a", "bb"]}))
    assert covers(keys(body), keys(json.loads(raw("openai-embeddings.json"))))
    assert len(CreateEmbeddingResponse.model_validate(body).data) == 2


def test_anthropic_messages_and_streams_match_the_fixtures(mock_upstream):
    url = f"{mock_upstream.url}/v1/messages"
    body = json.loads(post(url, {"model": "claude", "max_tokens": 50, "messages": PROMPT}))
    fixture = json.loads(raw("anthropic-message.json"))
    fixture["usage"].pop("cache_creation")  # a newer field the mock does not model
    assert covers(keys(body), keys(fixture))
    message = Message.model_validate(body)
    assert message.usage.cache_read_input_tokens > 0 and message.usage.cache_creation_input_tokens == 8
    stream = sse(post(url, {"model": "claude", "max_tokens": 50, "messages": PROMPT, "stream": True}))
    names = [name for name, _ in stream]
    fixture_names = [name for _, name, _ in events("anthropic-message-stream.sse")]
    assert names[:3] == fixture_names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == fixture_names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    adapter = TypeAdapter(RawMessageStreamEvent)
    parsed = [adapter.validate_python(json.loads(d)) for name, d in stream if name != "ping"]
    start, delta = parsed[0], parsed[-2]
    assert start.message.usage.input_tokens == delta.usage.input_tokens  # repeated, as the current API does
    assert delta.usage.output_tokens > start.message.usage.output_tokens == 1


def test_a_stream_error_ends_in_an_error_event(mock_upstream):
    stream = sse(post(f"{mock_upstream.url}/v1/messages",
                      {"model": "stream-error", "max_tokens": 5, "messages": PROMPT, "stream": True}))
    assert stream[-1][0] == "error" and json.loads(stream[-1][1])["error"]["type"] == "overloaded_error"
    fixture = events("anthropic-message-stream-error.sse")
    assert fixture[-1][1] == "error"


# --- OpenAI Responses API ------------------------------------------------------------------------

RESPONSE_EVENTS_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                         "response.content_part.done", "response.output_item.done", "response.completed"]


def responses_stream(url, model, **extra):
    """The mock's Responses stream for PROMPT: (event name, parsed data) pairs, each checked against
    the SDK's event types and numbered 0..n."""
    from openai.types.responses import ResponseStreamEvent

    stream = sse(post(f"{url}/v1/responses", {"model": model, "input": PROMPT, "stream": True, **extra}))
    adapter = TypeAdapter(ResponseStreamEvent)
    parsed = [(name, json.loads(data)) for name, data in stream]
    assert all(name == data["type"] for name, data in parsed)
    assert [data["sequence_number"] for _, data in parsed] == list(range(len(parsed)))
    for _, data in parsed:
        adapter.validate_python(data)
    assert all(data != "[DONE]" for _, data in stream)
    return parsed


def collapsed(names):
    """Event names with runs of the same name kept once."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def expected_usage(model):
    """The mock's documented counts for PROMPT and `model`: 16 reasoning tokens on top of the reply."""
    prompt = PROMPT[0]["content"]
    prompt_tokens = 10 + -(-len(prompt) // 4)
    reply = f"Mock reply from {model}: {prompt[:40]}"
    return prompt_tokens, reply, -(-len(reply) // 4) + 16


def test_responses_match_the_fixture_and_parse_with_the_sdk(mock_upstream):
    from openai.types.responses import Response

    body = json.loads(post(f"{mock_upstream.url}/v1/responses", {"model": "gpt-5", "input": PROMPT}))
    assert covers(keys(body), keys(json.loads(raw("openai-responses.json"))))
    response = Response.model_validate(body)
    prompt_tokens, reply, output_tokens = expected_usage("gpt-5")
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == reply and len(response.output) == 1
    usage = response.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens) == (prompt_tokens, prompt_tokens // 2)
    assert prompt_tokens >= 64
    assert (usage.output_tokens, usage.output_tokens_details.reasoning_tokens) == (output_tokens, 16)
    assert usage.total_tokens == prompt_tokens + output_tokens


def test_responses_streams_match_the_fixture_event_by_event(mock_upstream):
    from openai.types.responses import Response

    parsed = responses_stream(mock_upstream.url, "gpt-5")
    names = [name for name, _ in parsed]
    fixture = [(name, json.loads(data)) for _, name, data in events("openai-responses-stream.sse")]
    assert collapsed(names) == collapsed([name for name, _ in fixture]) == RESPONSE_EVENTS_ORDER
    mine = dict(parsed)  # the last event of each name
    for name, data in fixture:
        assert covers(keys(mine[name]), keys(data)), name
    text = "".join(data["delta"] for name, data in parsed if name == "response.output_text.delta")
    prompt_tokens, reply, output_tokens = expected_usage("gpt-5")
    assert text == reply == mine["response.output_text.done"]["text"]
    assert all(data["response"]["usage"] is None for name, data in parsed[:2])
    final = Response.model_validate(mine["response.completed"]["response"])
    assert final.status == "completed" and final.output_text == reply
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt_tokens, output_tokens)
    assert final.usage.output_tokens_details.reasoning_tokens == 16


def test_a_responses_stream_error_ends_in_response_failed_with_usage(mock_upstream):
    parsed = responses_stream(mock_upstream.url, "stream-error")
    names = [name for name, _ in parsed]
    assert names[-1] == "response.failed" and "response.completed" not in names
    failed = parsed[-1][1]["response"]
    text = "".join(data["delta"] for name, data in parsed if name == "response.output_text.delta")
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["usage"]["output_tokens"] == -(-len(text) // 4) + 16
    assert failed["usage"]["input_tokens"] == expected_usage("stream-error")[0]


def test_an_incomplete_response_ends_in_response_incomplete_with_usage(mock_upstream):
    from openai.types.responses import Response

    parsed = responses_stream(mock_upstream.url, "incomplete")
    names = [name for name, _ in parsed]
    assert collapsed(names) == RESPONSE_EVENTS_ORDER[:-1] + ["response.incomplete"]
    incomplete = Response.model_validate(parsed[-1][1]["response"])
    assert incomplete.status == "incomplete" and incomplete.incomplete_details.reason == "max_output_tokens"
    assert incomplete.usage.output_tokens == -(-len(incomplete.output_text) // 4) + 16
    whole = Response.model_validate(json.loads(post(f"{mock_upstream.url}/v1/responses",
                                                    {"model": "incomplete", "input": PROMPT})))
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output_text == incomplete.output_text and whole.usage == incomplete.usage


def test_responses_without_usage_and_failing_responses(mock_upstream):
    import urllib.error

    from openai.types.responses import Response

    url = f"{mock_upstream.url}/v1/responses"
    assert Response.model_validate(json.loads(post(url, {"model": "no-usage", "input": "Hi"}))).usage is None
    parsed = responses_stream(mock_upstream.url, "no-usage")
    assert all(data["response"]["usage"] is None for _, data in parsed if "response" in data)
    for status in (500, 429):
        try:
            post(url, {"model": f"fail-{status}", "input": "Hi"})
            raise AssertionError("no error status")
        except urllib.error.HTTPError as error:
            assert error.code == status
            assert set(json.loads(error.read())) == set(json.loads(raw("openai-error.json")))


def test_token_counts_and_compaction_parse_with_the_sdks(mock_upstream):
    import anthropic
    import openai
    from openai.types.responses import ResponseCompactionItem, ResponseUsage

    client = openai.OpenAI(base_url=f"{mock_upstream.url}/v1", api_key="test", max_retries=0)
    count = client.responses.input_tokens.count(model="gpt-5", input=PROMPT)
    assert count.object == "response.input_tokens" and count.input_tokens == expected_usage("gpt-5")[0]
    conversation = [*PROMPT, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "More."}]
    compacted = client.responses.compact(model="gpt-5", input=conversation)
    assert compacted.object == "response.compaction" and compacted.id
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    body = json.loads(post(f"{mock_upstream.url}/v1/responses/compact", {"model": "gpt-5", "input": conversation}))
    ResponseCompactionItem.model_validate(body["output"][-1])
    usage = ResponseUsage.model_validate(body["usage"])
    assert usage.input_tokens == 10 + -(-len(PROMPT[0]["content"] + "Sure.More.") // 4)
    assert usage.output_tokens == 24 and usage.output_tokens_details.reasoning_tokens == 16
    claude = anthropic.Anthropic(base_url=mock_upstream.url, api_key="test", max_retries=0)
    tokens = claude.messages.count_tokens(model="claude", messages=PROMPT, system="Be brief.")
    message = Message.model_validate(json.loads(post(f"{mock_upstream.url}/v1/messages",
                                                     {"model": "claude", "max_tokens": 50, "messages": PROMPT,
                                                      "system": "Be brief."})))
    cached = message.usage.cache_read_input_tokens + message.usage.cache_creation_input_tokens
    assert tokens.input_tokens == message.usage.input_tokens + cached


def test_the_new_routes_are_recorded(mock_upstream):
    mock_upstream.mock.seen = []
    for path, body in [("/v1/responses", {"model": "m", "input": "a"}),
                       ("/v1/responses", {"model": "m", "input": "b", "stream": True}),
                       ("/v1/responses/input_tokens", {"model": "m", "input": "c"}),
                       ("/v1/responses/compact", {"model": "m", "input": "d"}),
                       ("/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": "e"}]})]:
        post(f"{mock_upstream.url}{path}", body)
    with urllib.request.urlopen(f"{mock_upstream.url}/_mock/requests", timeout=10) as response:
        seen = json.loads(response.read())
    assert [(s["path"], s["body"]["model"]) for s in seen] == [
        ("/v1/responses", "m"), ("/v1/responses", "m"), ("/v1/responses/input_tokens", "m"),
        ("/v1/responses/compact", "m"), ("/v1/messages/count_tokens", "m")]
    assert seen[1]["body"]["stream"] is True
