"""gateway.providers.openai against the OpenAI fixtures."""

import json

import pytest

from gateway.providers import Usage
from gateway.providers.openai import StreamState, error_body, finish_response, prepare_request
from tests.support.fixtures import events, raw

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only


def run_stream(name, caller_wants_usage):
    state = StreamState("public-model", caller_wants_usage, {"messages": [{"role": "user", "content": "Hello"}]})
    sent = [state.process(r, n, d) for r, n, d in events(name)]
    return state, [s for s in sent if s is not None]


def test_a_whole_completion_reports_cached_prompt_tokens_and_is_renamed():
    body, usage = finish_response(raw("openai-chat.json"), "public-model", {})
    assert usage == Usage(input_tokens=1290, cached_input_tokens=1152, output_tokens=8, service_tier="default")
    assert json.loads(body)["model"] == "public-model"


def test_embeddings_have_prompt_tokens_and_no_completion_tokens():
    _, usage = finish_response(raw("openai-embeddings.json"), "emb", {})
    assert usage == Usage(input_tokens=8)


def test_a_stream_with_include_usage_reads_the_final_chunk():
    state, sent = run_stream("openai-chat-stream-include-usage.sse", caller_wants_usage=True)
    assert state.usage() == Usage(input_tokens=1290, cached_input_tokens=1152, output_tokens=3)
    assert state.done and not state.error
    assert all(b'"model":"public-model"' in s for s in sent if s.startswith(b"data: {"))
    assert sent[-1] == b"data: [DONE]\n\n"


def test_the_usage_chunk_is_hidden_from_a_caller_who_did_not_ask():
    state, sent = run_stream("openai-chat-stream-include-usage.sse", caller_wants_usage=False)
    assert state.usage().input_tokens == 1290
    assert not any(b'"choices":[]' in s for s in sent)
    assert len(sent) == len(events("openai-chat-stream-include-usage.sse")) - 1


def test_a_stream_without_usage_is_estimated_from_text():
    state, _ = run_stream("openai-chat-stream.sse", caller_wants_usage=False)
    usage = state.usage()
    assert usage.estimated and usage.input_tokens == 2  # "Hello" is 5 characters
    assert usage.output_tokens == -(-len("".join(state.text)) // 4)


def test_a_stream_ending_in_an_error_is_flagged():
    state, sent = run_stream("openai-chat-stream-error.sse", caller_wants_usage=False)
    assert state.error and not state.done
    assert b'"server_error"' in sent[-1]


def test_streaming_asks_the_upstream_for_usage_and_keeps_other_options():
    body, wants = prepare_request({"model": "x", "stream": True, "stream_options": {"foo": 1}}, "up", True)
    assert body["stream_options"] == {"foo": 1, "include_usage": True} and body["model"] == "up" and wants is False
    _, wants = prepare_request({"model": "x", "stream_options": {"include_usage": True}}, "up", True)
    assert wants is True


def test_errors_have_the_openai_shape_of_the_fixture():
    fixture = json.loads(raw("openai-error.json"))
    ours = json.loads(error_body(429, "Budget exceeded", type="budget_exceeded", code="budget_exceeded"))
    assert set(ours) == set(fixture) and set(ours["error"]) == set(fixture["error"])
