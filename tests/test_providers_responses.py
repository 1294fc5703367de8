"""gateway.providers.responses (OpenAI's Responses API) against the OpenAI fixtures, and the reasoning
and cache-write details of Chat Completions usage."""

import json

import pytest

from gateway.providers import SSEReader, UntrustedUsage, Usage, openai
from gateway.providers import responses
from gateway.providers.responses import StreamState, finish_response, prepare_request, prompt_text
from tests.support.fixtures import events, raw

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

REQUEST = {"model": "public-model", "input": "Hello", "stream": True}
LIFECYCLE = ("response.created", "response.in_progress", "response.completed", "response.incomplete",
             "response.failed")
FIXTURE_USAGE = Usage(input_tokens=11, cached_input_tokens=3, output_tokens=7, reasoning_tokens=2)
REPLY = "Hello from the mock upstream."


def run(stream_events, request=REQUEST):
    state = StreamState("public-model", False, request)
    return state, [state.process(r, n, d) for r, n, d in stream_events]


def parse(data: bytes):
    """The events of a stream given whole."""
    return SSEReader().feed(data)


def completed_response() -> dict:
    """The Response that the fixture stream's `response.completed` event carries."""
    return json.loads(events("openai-responses-stream.sse")[-1][2])["response"]


def stream_of(*items: tuple[str, dict]) -> bytes:
    """A stream in the API's framing, `sequence_number` counting from 0."""
    out = b""
    for number, (kind, fields) in enumerate(items):
        data = json.dumps({"type": kind, "sequence_number": number, **fields})
        out += f"event: {kind}\ndata: {data}\n\n".encode()
    return out


def delta(text: str) -> tuple[str, dict]:
    return "response.output_text.delta", {"item_id": "msg_mock", "output_index": 0, "content_index": 0,
                                          "delta": text, "logprobs": []}


# --- whole responses -----------------------------------------------------------------------


def test_a_whole_response_reports_cached_input_and_reasoning_output():
    """Catches: the Responses API's reasoning tokens (output_tokens_details) ignored."""
    _, usage = finish_response(raw("openai-responses.json"), "public-model", {})
    assert usage == FIXTURE_USAGE


def test_a_whole_response_keeps_its_bytes_but_for_the_model():
    original = raw("openai-responses.json")
    body, _ = finish_response(original, "public-model", {})
    assert original.count(b'"model": "gpt-5"') == 1
    assert body == original.replace(b'"model": "gpt-5"', b'"model": "public-model"')
    assert json.loads(body)["model"] == "public-model"


def test_a_whole_response_without_usage_is_estimated_from_its_text():
    answer = json.loads(raw("openai-responses.json"))
    answer.pop("usage")
    request = {"instructions": "Be brief.", "input": [{"role": "user", "content": [{"type": "input_text",
                                                                                    "text": "Say hello"}]}]}
    _, usage = finish_response(json.dumps(answer).encode(), "public-model", request)
    assert usage == Usage(input_tokens=-(-len("Be brief.Say hello") // 4), output_tokens=-(-len(REPLY) // 4),
                          estimated=True)
    answer["usage"] = None
    _, usage = finish_response(json.dumps(answer).encode(), "public-model", {"input": "Hello"})
    assert usage == Usage(input_tokens=2, output_tokens=8, estimated=True)


def test_a_whole_answer_that_is_not_json_is_a_value_error():
    with pytest.raises(ValueError):
        finish_response(b"<html>Bad gateway</html>", "public-model", {})
    with pytest.raises(ValueError):
        finish_response(b"\xff\xfe", "public-model", {})


def test_the_model_is_renamed_at_the_top_only_even_when_metadata_repeats_it():
    answer = json.loads(raw("openai-responses.json"))
    # `metadata` first, so the first `"model":"gpt-5"` in the bytes is not the Response's.
    metadata = {"note": 'a "quoted" [x] {y} \\', "model": "gpt-5"}  # strings with brackets do not nest
    reordered = {"metadata": metadata, **{k: v for k, v in answer.items() if k != "metadata"}}
    original = json.dumps(reordered, separators=(",", ":")).encode()
    assert original.count(b'"model":"gpt-5"') == 2
    body, usage = finish_response(original, "public-model", {})
    assert json.loads(body) == {**reordered, "model": "public-model"}
    assert len(body) == len(original) + len("public-model") - len("gpt-5")
    assert usage == FIXTURE_USAGE


def test_a_compacted_response_has_no_model_and_keeps_its_usage():
    compacted = {"id": "resp_1", "object": "response.compaction", "created_at": 1, "output": [],
                 "usage": {"input_tokens": 139, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                           "output_tokens": 438, "output_tokens_details": {"reasoning_tokens": 64},
                           "total_tokens": 577}}
    original = json.dumps(compacted).encode()
    body, usage = finish_response(original, "public-model", {})
    assert body == original
    assert usage == Usage(input_tokens=139, output_tokens=438, reasoning_tokens=64)


# --- usage details ---------------------------------------------------------------------------


def test_responses_usage_reads_cache_writes_and_clamps_the_details():
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
             "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 20}}
    assert responses.usage_from(usage) == Usage(input_tokens=100, cached_input_tokens=60, cache_write_tokens=30,
                                                output_tokens=50, reasoning_tokens=20)
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 160, "cache_write_tokens": 30},
             "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 80}}
    assert responses.usage_from(usage) == Usage(input_tokens=100, cached_input_tokens=100, output_tokens=50,
                                                reasoning_tokens=50)
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 70},
             "output_tokens": 50}
    assert responses.usage_from(usage) == Usage(input_tokens=100, cached_input_tokens=60, cache_write_tokens=40,
                                                output_tokens=50)


@pytest.mark.parametrize(("field", "usage"), [
    ("input_tokens", {"input_tokens": "11", "output_tokens": 7}),
    ("input_tokens_details.cached_tokens", {"input_tokens": 11, "input_tokens_details": {"cached_tokens": -3}}),
    ("input_tokens_details.cache_write_tokens", {"input_tokens": 11, "input_tokens_details": {"cache_write_tokens": 2.5}}),
    ("output_tokens_details.reasoning_tokens", {"output_tokens": 7, "output_tokens_details": {"reasoning_tokens": True}}),
    ("output_tokens", {"input_tokens": 11, "output_tokens": -7}),
    ("input_tokens", {"input_tokens": 2**32 + 1, "output_tokens": 7}),
])
def test_responses_usage_that_cannot_be_a_token_count_is_not_trusted(field, usage):
    with pytest.raises(UntrustedUsage) as raised:
        responses.usage_from(usage)
    assert raised.value.field == field


def test_responses_usage_absent_or_null_counts_zero():
    usage = {"input_tokens": 11, "input_tokens_details": None, "output_tokens": 7, "output_tokens_details": [2]}
    assert responses.usage_from(usage) == Usage(input_tokens=11, output_tokens=7)
    assert responses.usage_from({"input_tokens": 2**32, "output_tokens": 7.0}) == Usage(input_tokens=2**32,
                                                                                         output_tokens=7)
    assert responses.usage_from(None) is None and responses.usage_from([]) is None


def test_chat_completions_usage_reads_cache_writes_and_reasoning():
    """Catches: Chat Completions' reasoning tokens (completion_tokens_details) ignored."""
    usage = {"prompt_tokens": 100, "completion_tokens": 50,
             "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
             "completion_tokens_details": {"reasoning_tokens": 20}}
    assert openai.usage_from(usage) == Usage(input_tokens=100, cached_input_tokens=60, cache_write_tokens=30,
                                             output_tokens=50, reasoning_tokens=20)


def test_chat_completions_details_are_clamped_to_their_totals():
    usage = {"prompt_tokens": 100, "completion_tokens": 50,
             "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 70},
             "completion_tokens_details": {"reasoning_tokens": 80}}
    assert openai.usage_from(usage) == Usage(input_tokens=100, cached_input_tokens=60, cache_write_tokens=40,
                                             output_tokens=50, reasoning_tokens=50)


def test_chat_completions_usage_with_a_count_that_is_not_one_is_estimated_and_logged(caplog):
    body = {"model": "m", "choices": [{"message": {"content": "x" * 40}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50,
                      "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": "30"}}}
    _, usage = openai.finish_response(json.dumps(body).encode(), "public-model",
                                      {"messages": [{"role": "user", "content": "y" * 80}]})
    assert usage == Usage(input_tokens=20, output_tokens=10, estimated=True)  # 80 / 4 and 40 / 4
    assert "facade public-model: the upstream reported prompt_tokens_details.cache_write_tokens = '30'" in caplog.text


def test_chat_completions_fixtures_report_their_reasoning_tokens_or_none():
    _, usage = openai.finish_response(raw("openai-chat.json"), "public-model", {})
    assert usage == Usage(input_tokens=1290, cached_input_tokens=1152, output_tokens=8, service_tier="default")
    _, usage = openai.finish_response(raw("openai-chat-flex.json"), "public-model", {})
    assert usage == Usage(input_tokens=20_000, cached_input_tokens=8000, output_tokens=3000, reasoning_tokens=2000,
                          service_tier="flex")


# --- streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 100_000])
def test_a_stream_reads_usage_from_response_completed_whatever_the_chunking(chunk_size):
    state, sent = run(events("openai-responses-stream.sse", chunk_size))
    assert state.usage() == FIXTURE_USAGE
    assert state.done and not state.error
    assert "".join(state.text) == REPLY


def test_a_stream_renames_the_model_in_response_events_only_and_passes_the_rest_byte_for_byte():
    received = events("openai-responses-stream.sse")
    _, sent = run(received)
    assert len(sent) == len(received) and all(s is not None for s in sent)
    renamed = 0
    for (original, name, data), out in zip(received, sent):
        if json.loads(data)["type"] in LIFECYCLE:
            assert original.count(b'"model": "gpt-5"') == 1
            assert out == original.replace(b'"model": "gpt-5"', b'"model": "public-model"')
            assert json.loads(parse(out)[0][2])["response"]["model"] == "public-model"
            renamed += 1
        else:
            assert out == original
    assert renamed == 3  # created, in_progress, completed
    assert b"".join(sent) == raw("openai-responses-stream.sse").replace(b'"model": "gpt-5"',
                                                                        b'"model": "public-model"')


def test_a_model_in_other_events_or_in_metadata_is_left_alone():
    response = {**completed_response(), "metadata": {"model": "gpt-5"}}
    item = {"id": "x", "type": "message", "status": "completed", "role": "assistant", "model": "gpt-5",
            "content": []}
    data = stream_of(("response.output_item.done", {"output_index": 0, "item": item}),
                     ("response.completed", {"response": response}))
    received = parse(data)
    _, sent = run(received)
    assert sent[0] == received[0][0]
    done = json.loads(parse(sent[1])[0][2])["response"]
    assert done["model"] == "public-model" and done["metadata"] == {"model": "gpt-5"}


def test_the_same_public_and_upstream_name_changes_nothing():
    state = StreamState("gpt-5", False, REQUEST)
    received = events("openai-responses-stream.sse")
    assert [state.process(r, n, d) for r, n, d in received] == [r for r, _, _ in received]


def test_a_stream_without_usage_is_estimated_from_its_text():
    response = {**completed_response(), "usage": None}
    data = stream_of(("response.created", {"response": {**response, "status": "in_progress", "output": []}}),
                     delta("Hello"), delta(" there"), ("response.completed", {"response": response}))
    state, _ = run(parse(data), {"input": "Hello", "instructions": "Be nice"})
    assert state.done and not state.error
    assert state.usage() == Usage(input_tokens=-(-len("Be niceHello") // 4), output_tokens=-(-len("Hello there") // 4),
                                  estimated=True)


def test_a_failed_response_is_an_error_with_the_usage_it_reports():
    usage = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0},
             "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 16}, "total_tokens": 31}
    failed = {**completed_response(), "status": "failed", "usage": usage,
              "error": {"code": "server_error", "message": "The server had an error"}}
    data = stream_of(delta("Hel"), delta("lo"), ("response.failed", {"response": failed}))
    received = parse(data)
    state, sent = run(received)
    assert state.error and state.done
    assert state.usage() == Usage(input_tokens=11, cached_input_tokens=3, output_tokens=20, reasoning_tokens=16)
    assert json.loads(parse(sent[-1])[0][2])["response"]["model"] == "public-model"


def test_a_failed_response_without_usage_is_estimated():
    failed = {**completed_response(), "status": "failed", "usage": None,
              "error": {"code": "server_error", "message": "The server had an error"}}
    state, _ = run(parse(stream_of(delta("Hello there"), ("response.failed", {"response": failed}))))
    assert state.error and state.done
    assert state.usage() == Usage(input_tokens=2, output_tokens=3, estimated=True)


def test_an_incomplete_response_is_a_normal_end():
    incomplete = {**completed_response(), "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    state, sent = run(parse(stream_of(delta("Hello"), ("response.incomplete", {"response": incomplete}))))
    assert state.done and not state.error
    assert state.usage() == FIXTURE_USAGE
    assert json.loads(parse(sent[-1])[0][2])["response"]["model"] == "public-model"


def test_an_error_event_is_flagged_and_passed_on():
    data = stream_of(delta("Hello"), ("error", {"code": "server_error", "message": "Oops", "param": None}))
    received = parse(data)
    state, sent = run(received)
    assert state.error and not state.done
    assert sent == [r for r, _, _ in received]
    assert state.usage() == Usage(input_tokens=2, output_tokens=2, estimated=True)


def test_a_stream_cut_short_is_neither_done_nor_an_error():
    received = events("openai-responses-stream.sse")[:7]  # up to the third delta
    state, _ = run(received)
    assert not state.done and not state.error
    assert state.usage().estimated and state.usage().output_tokens == -(-len("Hello from the") // 4)


def test_events_that_are_not_json_pass_through():
    state = StreamState("public-model", False, REQUEST)
    assert state.process(b": keep-alive\n\n", None, "") == b": keep-alive\n\n"
    assert state.process(b"data: [1]\n\n", None, "[1]") == b"data: [1]\n\n"
    assert not state.done and not state.error


# --- requests --------------------------------------------------------------------------------


def test_the_request_changes_only_its_model():
    body = {"model": "public-model", "input": [{"role": "user", "content": "Hi"}], "stream": True, "store": False,
            "previous_response_id": "resp_1", "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "reasoning": {"effort": "high"}, "include": ["reasoning.encrypted_content"]}
    snapshot = json.loads(json.dumps(body))
    outgoing, wants = prepare_request(body, "gpt-5", True)
    assert outgoing == {**snapshot, "model": "gpt-5"} and wants is False  # no stream_options added
    assert body == snapshot
    assert prepare_request({"model": "m", "input": "x"}, "up", False) == ({"model": "up", "input": "x"}, False)


def test_the_prompt_text_is_the_instructions_and_the_input():
    assert prompt_text({"input": "Hello", "instructions": "Be brief."}) == "Be brief.Hello"
    items = [{"role": "developer", "content": "Rules."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Look: "},
                                                              {"type": "input_image", "image_url": "data:,"}]},
             {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
             {"type": "function_call_output", "call_id": "c1", "output": "42"}]
    assert prompt_text({"input": items}) == 'Rules.Look: {"a":1}42'
    assert prompt_text({}) == "" and prompt_text({"instructions": None, "input": None}) == ""


def test_the_interface_is_the_chat_completions_one():
    assert responses.NAME == "openai"
    assert responses.error_body is openai.error_body and responses.auth_headers is openai.auth_headers
    assert responses.models_list is openai.models_list
    state = StreamState("p", True, {})
    assert (state.done, state.error) == (False, False)
