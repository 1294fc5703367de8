"""The OpenAI Responses API and the free token counts, end to end: the real gateway under uvicorn,
the mock upstream, and the official SDKs (and the OpenAI Agents SDK) unmodified but for their base
URL. The ledger holds exactly what the answers reported: tokens, reasoning tokens and nanodollars."""

import asyncio
import http.client
import http.server
import json
import math
import threading
import time
from decimal import Decimal

import openai
import pytest

from gateway.mock_upstream import REASONING_TOKENS, counts
from gateway.models import ModelFacade
from tests.support.fixtures import raw
from tests.test_gateway_app import GPT, LONG_PROMPT, chat, expected, gw, ledger, post  # noqa: F401 (gw)
from usage.budgets.setting import set_budget
from usage.money import usd_exact

OPENAI_EVENTS_WITH_RESPONSE = {"response.created", "response.in_progress", "response.completed",
                               "response.incomplete", "response.failed"}


def responses_expected(usage, errors=0):
    """The ledger's counters for one Responses API call, from the usage the caller was given."""
    details = usage.input_tokens_details
    cached = details.cached_tokens if details else 0
    writes = (getattr(details, "cache_write_tokens", 0) or 0) if details else 0
    reasoning = usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0
    return expected(GPT, inp=usage.input_tokens, cached=cached, writes=writes, out=usage.output_tokens,
                    errors=errors, reasoning=reasoning)


def nothing_recorded():
    return all(value == 0 for value in ledger().values())


def test_a_response_is_proxied_renamed_and_counted_with_its_reasoning_tokens(gw):
    raw = gw.openai.responses.with_raw_response.create(model="gpt-test", input=LONG_PROMPT,
                                                       reasoning={"effort": "low"}, store=False)
    response = raw.parse()
    assert response.model == "gpt-test" and response.output_text.startswith("Mock reply")
    assert response.usage.input_tokens_details.cached_tokens > 0
    assert response.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS
    assert ledger() == responses_expected(response.usage)  # so the ledger holds the 16 reasoning tokens too
    assert raw.headers["x-codevector-cost-usd"] == usd_exact(ledger()["cost_nanos"])
    sent = gw.mock.seen[-1]
    assert sent["path"] == "/v1/responses" and sent["body"]["model"] == "gpt-4o-mini"
    assert sent["body"]["reasoning"] == {"effort": "low"} and sent["body"]["store"] is False  # passed through


def test_cached_input_is_priced_apart_so_ignoring_the_details_would_cost_more(gw):
    """Catches: cached reads billed at another price (the cache-write price, 0 on this facade, or the
    input price). The prices are whole nanodollars a token, so the cost is exact without rounding."""
    response = gw.openai.responses.create(model="gpt-test", input=LONG_PROMPT)
    usage = response.usage
    cached = usage.input_tokens_details.cached_tokens
    assert cached > 0
    # $0.15, $0.075 cached, $0.60 out per million tokens: 150, 75 and 600 nanodollars a token.
    assert ledger()["cost_nanos"] == (usage.input_tokens - cached) * 150 + cached * 75 + usage.output_tokens * 600


def test_a_stream_renames_only_the_response_objects_and_counts_the_final_usage(gw):
    with gw.openai.responses.stream(model="gpt-test", input=LONG_PROMPT) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert {event.response.model for event in events if event.type in OPENAI_EVENTS_WITH_RESPONSE} == {"gpt-test"}
    _, _, reply = counts(LONG_PROMPT, "gpt-4o-mini")
    assert final.output_text == reply and final.model == "gpt-test"
    assert ledger() == responses_expected(final.usage)


def test_an_async_stream_is_counted_too(gw):
    async def run():
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, timeout=20)
        async with client.responses.stream(model="gpt-test", input=LONG_PROMPT) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        await client.close()
        return final

    final = asyncio.run(run())
    assert ledger() == responses_expected(final.usage)


def test_raw_stream_events_other_than_the_response_ones_pass_through_byte_for_byte(gw):
    direct = post(SimpleUrl(gw.mock_url), "/v1/responses", json.dumps(
        {"model": "gpt-4o-mini", "input": "Hi", "stream": True}).encode())[2]
    via_gateway = post(gw, "/v1/responses", json.dumps({"model": "gpt-test", "input": "Hi", "stream": True}).encode())[2]
    split = lambda data: [e for e in data.split(b"\n\n") if e]  # noqa: E731
    assert len(split(direct)) == len(split(via_gateway)) and b"[DONE]" not in via_gateway
    for mine, theirs in zip(split(via_gateway), split(direct)):
        if any(f"event: {kind}\n".encode() in theirs for kind in OPENAI_EVENTS_WITH_RESPONSE):
            assert b'"model":"gpt-test"' in mine and b'"model":"gpt-4o-mini' not in mine
        else:
            assert _without_times(mine) == _without_times(theirs)


class SimpleUrl:
    def __init__(self, url):
        self.url, self.key = url, "unused"


def _without_times(event: bytes) -> bytes:
    """The mock's ids and timestamps differ between two calls; everything else must not."""
    data = json.loads(event.split(b"data: ", 1)[1])
    for key in ("item_id", "id", "created_at"):
        data.pop(key, None)
    if isinstance(data.get("item"), dict):
        data["item"].pop("id", None)
    return json.dumps(data, sort_keys=True).encode()


def test_a_stream_the_caller_abandons_halfway_is_counted_estimated_not_as_an_error(gw):
    gw.mock.chunk_delay = 0.3
    host, port = gw.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/v1/responses", body=json.dumps(
        {"model": "gpt-test", "input": LONG_PROMPT, "stream": True}), headers={
        "authorization": f"Bearer {gw.key}", "content-type": "application/json"})
    response = connection.getresponse()
    received = b""
    while received.count(b"response.output_text.delta\n") < 2:
        received += response.read1(4096)
    response.close()
    connection.close()
    deadline = time.monotonic() + 10
    while ledger()["requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    totals = ledger()
    assert (totals["requests"], totals["error_requests"], totals["estimated_requests"]) == (1, 0, 1)
    assert totals["input_tokens"] == math.ceil(len(LONG_PROMPT) / 4)
    assert 0 < totals["output_tokens"] < counts(LONG_PROMPT, "gpt-4o-mini")[1]


def test_an_upstream_error_is_passed_on_and_counted_as_an_error_request(gw):
    with pytest.raises(openai.InternalServerError):
        gw.openai.responses.create(model="gpt-fail-500", input="Hi")
    assert ledger() == expected(GPT, errors=1)


def test_a_failed_stream_is_an_error_request_with_the_usage_it_reported(gw):
    status, _, body = post(gw, "/v1/responses", json.dumps(
        {"model": "gpt-stream-error", "input": LONG_PROMPT, "stream": True}).encode())
    assert status == 200
    failed = [json.loads(e.split(b"data: ", 1)[1]) for e in body.split(b"\n\n") if b"event: response.failed" in e]
    assert len(failed) == 1 and failed[0]["response"]["model"] == "gpt-stream-error"
    usage = openai.types.responses.ResponseUsage.model_validate(failed[0]["response"]["usage"])
    assert ledger() == responses_expected(usage, errors=1)


def test_an_incomplete_response_is_a_normal_answer_counted_with_its_usage(gw):
    response = gw.openai.responses.create(model="gpt-incomplete", input=LONG_PROMPT)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert ledger() == responses_expected(response.usage)


def test_background_responses_are_refused_and_nothing_is_recorded(gw):
    forwarded = len(gw.mock.seen)
    with pytest.raises(openai.BadRequestError) as refused:
        gw.openai.responses.create(model="gpt-test", input="Hi", background=True)
    error = refused.value.body
    assert refused.value.status_code == 400 and error["param"] == "background"
    assert "not supported through the gateway" in error["message"]
    assert nothing_recorded() and len(gw.mock.seen) == forwarded


@pytest.mark.parametrize("method, path", [("GET", "/v1/responses/resp_123"), ("DELETE", "/v1/responses/resp_123"),
                                          ("POST", "/v1/responses/resp_123/cancel"),
                                          ("GET", "/v1/responses/resp_123/input_items")])
def test_stored_response_routes_answer_a_clear_404_in_openais_format(gw, method, path):
    host, port = gw.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(method, path, headers={"authorization": f"Bearer {gw.key}"})
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 404 and error["type"] == "invalid_request_error"
    assert "previous_response_id" in error["message"] and path in error["message"]


def test_compact_is_billed_like_a_response(gw):
    compacted = gw.openai.responses.compact(model="gpt-test", input=LONG_PROMPT)
    assert ledger() == responses_expected(compacted.usage)
    assert gw.mock.seen[-1]["path"] == "/v1/responses/compact"
    assert gw.mock.seen[-1]["body"]["model"] == "gpt-4o-mini"


def test_counting_input_tokens_is_forwarded_and_records_nothing(gw):
    count = gw.openai.responses.input_tokens.count(model="gpt-test", input=LONG_PROMPT)
    assert count.input_tokens == counts(LONG_PROMPT, "gpt-4o-mini")[0]
    assert gw.mock.seen[-1]["body"]["model"] == "gpt-4o-mini"
    assert nothing_recorded()


def test_anthropic_count_tokens_is_forwarded_renamed_never_billed_nor_refused_by_budgets(gw):
    set_budget(username=gw.user.username, period="daily", amount_usd=Decimal("0"), warn_percent=None, active=True)
    gw.server.refresh()
    with pytest.raises(Exception) as refused:  # a billed call is over the (zero) budget
        gw.anthropic.messages.create(model="claude-test", max_tokens=50, messages=chat("Hi"))
    assert getattr(refused.value, "status_code", None) == 429
    count = gw.anthropic.messages.count_tokens(model="claude-test", messages=chat())
    assert count.input_tokens == counts(LONG_PROMPT, "claude-sonnet-4-5")[0]
    assert gw.mock.seen[-1]["path"] == "/v1/messages/count_tokens"
    assert gw.mock.seen[-1]["body"]["model"] == "claude-sonnet-4-5"
    assert nothing_recorded()


@pytest.fixture
def details_upstream():
    """An upstream that answers every chat completion with the wire fixture's answer (20,000 prompt
    tokens, 8,000 of them cached reads; 3,000 output tokens, 2,000 of them reasoning) and 4,000
    cache writes among the prompt's tokens: the mock upstream's chat answers report neither."""
    answer = json.loads(raw("openai-chat-flex.json"))
    answer["usage"]["prompt_tokens_details"]["cache_write_tokens"] = 4000
    answer["service_tier"] = "default"
    body = json.dumps(answer).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_chat_completions_read_cache_writes_and_reasoning_from_the_details(gw, details_upstream):
    """Catches: the reasoning tokens or the cache writes of a chat completion's usage details ignored."""
    ModelFacade.objects.create(name="gpt-details", provider="openai", base_url=details_upstream,
                               upstream_model="gpt-5", input_price_micros=1_250_000,
                               cached_input_price_micros=125_000, cache_write_price_micros=2_000_000,
                               output_price_micros=10_000_000)
    gw.server.refresh()
    response = gw.openai.chat.completions.create(model="gpt-details", messages=chat())
    assert response.model == "gpt-details"
    assert (response.usage.completion_tokens_details.reasoning_tokens,
            response.usage.prompt_tokens_details.cache_write_tokens) == (2000, 4000)  # passed on
    assert ledger() == {
        "requests": 1, "error_requests": 0, "estimated_requests": 0, "input_tokens": 20_000,
        "cached_input_tokens": 8000, "cache_write_tokens": 4000, "cache_write_extended_tokens": 0,
        "output_tokens": 3000, "reasoning_tokens": 2000, "web_search_calls": 0, "file_search_calls": 0,
        # 8,000 uncached x $1.25 + 8,000 cached x $0.125 + 4,000 writes x $2 + 3,000 out x $10, per million.
        "cost_nanos": 10_000_000 + 1_000_000 + 8_000_000 + 30_000_000}


def test_an_agent_run_through_the_gateway_counts_every_model_call(gw):
    from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)  # its tracer would otherwise send the key to OpenAI's servers
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, timeout=20)
    agent = Agent(name="assistant", instructions="Answer briefly.",
                  model=OpenAIResponsesModel(model="gpt-test", openai_client=client))
    result = Runner.run_sync(agent, LONG_PROMPT)
    assert result.final_output.startswith("Mock reply")
    calls = result.raw_responses
    assert len(calls) >= 1
    totals = ledger()
    assert totals["requests"] == len(calls)
    assert totals["input_tokens"] == sum(call.usage.input_tokens for call in calls)
    assert totals["output_tokens"] == sum(call.usage.output_tokens for call in calls)
    assert totals["reasoning_tokens"] == REASONING_TOKENS * len(calls)
    asyncio.run(client.close())
