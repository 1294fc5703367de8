"""gateway.providers.anthropic against the Anthropic fixtures: input 2021 of which 1800 cached and
200 cache writes, output 57; stream counts are the latest values, never summed."""

import pytest
import json

from gateway.providers import Usage
from gateway.providers.anthropic import StreamState, error_body, finish_response, models_list
from tests.support.fixtures import events, raw

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

FIXTURE_USAGE = Usage(input_tokens=2021, cached_input_tokens=1800, cache_write_tokens=200, output_tokens=57,
                      service_tier="standard")


def run_stream(name):
    state = StreamState("public-claude", False, {"messages": [{"role": "user", "content": "Hi there"}]})
    sent = [state.process(r, n, d) for r, n, d in events(name)]
    return state, sent


def test_a_whole_message_counts_cache_reads_and_writes_as_input():
    body, usage = finish_response(raw("anthropic-message.json"), "public-claude", {})
    assert usage == FIXTURE_USAGE
    assert json.loads(body)["model"] == "public-claude"


def test_a_stream_takes_the_latest_counts_and_never_adds_message_start_to_message_delta():
    state, sent = run_stream("anthropic-message-stream.sse")
    assert state.usage() == FIXTURE_USAGE
    assert b'"model":"public-claude"' in sent[0] and state.done


def test_a_stream_ending_in_an_error_event_keeps_the_known_input_and_estimates_the_rest():
    state, _ = run_stream("anthropic-message-stream-error.sse")
    usage = state.usage()
    assert state.error and usage.estimated
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (21, 0, 0)
    assert usage.output_tokens == 1  # message_start's 1, more than the estimate of "Hel"


def test_errors_and_model_lists_have_the_anthropic_shapes():
    fixture = json.loads(raw("anthropic-error.json"))
    ours = json.loads(error_body(429, "Budget exceeded", type="budget_exceeded"))
    assert set(ours) == set(fixture) and set(ours["error"]) == set(fixture["error"]) and ours["type"] == "error"

    class Facade:
        name = "claude-x"

    listing = models_list([Facade()], 1764000000)
    assert listing == {"data": [{"type": "model", "id": "claude-x", "display_name": "claude-x",
                                 "created_at": "2025-11-24T16:00:00Z"}], "has_more": False,
                       "first_id": "claude-x", "last_id": "claude-x"}
