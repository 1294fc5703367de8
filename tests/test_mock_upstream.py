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
