"""Spend as the provider bills it (issue #28): wire fixtures in the providers' real shapes (each
parsed by the official SDK's types below) -> what the gateway reads -> nanodollars.

Every expected amount is written out from per-million prices, in milli-nanodollars (tokens x
micro-USD per million tokens), divided by 1000 once; a search costs its micro-USD per 1,000 calls
in nanodollars. The code under test computes none of them.
"""

import json
import logging
import math

import anthropic
import openai
import pytest
from pydantic import TypeAdapter

from gateway.mock_upstream.counts import BILLED_FILE_SEARCHES, BILLED_WEB_SEARCHES, BILLED_WRITES_1H, counts
from gateway.providers import SSEReader
from gateway.providers import anthropic as anthropic_wire
from gateway.providers import openai as openai_wire
from gateway.providers import responses as responses_wire
from tests.support.fixtures import events, raw
from tests.test_gateway_app import chat, gw, ledger  # noqa: F401 (gw)
from usage.pricing import Prices, PriceSet, Variant, cost_nanos

# Claude Sonnet 4.5: $3 input, $0.30 cache read, $3.75 5-minute write, $6 1-hour write, $15 output,
# $10 per 1,000 web searches; above 200,000 input tokens $6 / $0.60 / $7.50 / $12 / $22.50.
SONNET = Prices(input_micros=3_000_000, cached_input_micros=300_000, cache_write_micros=3_750_000,
                cache_write_extended_micros=6_000_000, output_micros=15_000_000, web_search_micros=10_000_000,
                tiers=((200_000, PriceSet(6_000_000, 600_000, 7_500_000, 12_000_000, 22_500_000, 10_000_000, 0)),))
# Claude Opus 4.6, and its fast mode at six times every token price ($30 / $3 / $37.50 / $60 / $150).
OPUS_FAST = Prices(input_micros=5_000_000, cached_input_micros=500_000, cache_write_micros=6_250_000,
                   cache_write_extended_micros=10_000_000, output_micros=25_000_000, web_search_micros=10_000_000,
                   variants={"fast": Variant(PriceSet(30_000_000, 3_000_000, 37_500_000, 60_000_000, 150_000_000,
                                                      10_000_000, 0))})
# GPT-5: $1.25 input, $0.125 cached, $10 output; flex half ($0.625 / $0.0625 / $5), priority
# double ($2.50 / $0.25 / $20). Writes: the 30-minute write at the input price, the 12-hour write
# at twice it (this facade's prices); searches $10 (web) and $2.50 (file) per 1,000 calls.
GPT5 = Prices(input_micros=1_250_000, cached_input_micros=125_000, cache_write_micros=1_250_000,
              cache_write_extended_micros=2_500_000, output_micros=10_000_000, web_search_micros=10_000_000,
              file_search_micros=2_500_000,
              variants={"flex": Variant(PriceSet(625_000, 62_500, 625_000, 1_250_000, 5_000_000, 10_000_000, 2_500_000)),
                        "priority": Variant(PriceSet(2_500_000, 250_000, 2_500_000, 5_000_000, 20_000_000, 10_000_000,
                                                     2_500_000))})
# GPT-5.4: $2.50 input, $0.25 cached, $15 output; above 272,000 input tokens the whole request at
# input and cache x2, output x1.5 ($5 / $0.50 / $22.50).
LONG = Prices(input_micros=2_500_000, cached_input_micros=250_000, cache_write_micros=2_500_000,
              cache_write_extended_micros=2_500_000, output_micros=15_000_000,
              tiers=((272_000, PriceSet(5_000_000, 500_000, 5_000_000, 5_000_000, 22_500_000, 0, 0)),))


def cost(prices, usage) -> int:
    return cost_nanos(prices, input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
                      cache_write_tokens=usage.cache_write_tokens,
                      cache_write_extended_tokens=usage.cache_write_extended_tokens, output_tokens=usage.output_tokens,
                      web_search_calls=usage.web_search_calls, file_search_calls=usage.file_search_calls,
                      service_tier=usage.service_tier, speed=usage.speed)


def stream_usage(module, name, request=None):
    state = module.StreamState("public", False, request or {"input": "x", "messages": []})
    for raw_event, event_name, data in events(name):
        state.process(raw_event, event_name, data)
    return state.usage()


# --- the fixtures are the providers' real shapes ------------------------------------------------


def sse_data(name):
    return [json.loads(data) for _, _, data in SSEReader().feed(raw(name)) if data.strip() != "[DONE]"]


def test_the_fixtures_parse_with_the_official_sdks_types():
    message = anthropic.types.Message.model_validate(json.loads(raw("anthropic-message-billed.json")))
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 2000
    assert message.usage.server_tool_use.web_search_requests == 3 and message.usage.service_tier == "priority"
    adapter = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    streamed = [adapter.validate_python(e) for e in sse_data("anthropic-message-billed-stream.sse")]
    assert streamed[0].message.usage.speed == "fast"
    assert openai.types.chat.ChatCompletion.model_validate(json.loads(raw("openai-chat-flex.json"))).service_tier == "flex"
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate(e) for e in sse_data("openai-chat-priority-stream.sse")]
    assert {c.service_tier for c in chunks} == {"priority"}
    response = openai.types.responses.Response.model_validate(json.loads(raw("openai-responses-billed.json")))
    assert response.usage.input_tokens_details.cache_write_tokens_details.ttl_12h_tokens == 8000
    assert [item.type for item in response.output] == ["web_search_call"] * 2 + ["file_search_call", "message"]
    adapter = TypeAdapter(openai.types.responses.ResponseStreamEvent)
    assert [adapter.validate_python(e).type for e in sse_data("openai-responses-billed-stream.sse")][-1] == \
        "response.completed"


# --- Anthropic ------------------------------------------------------------------------------------


def test_anthropic_5_minute_and_1_hour_writes_web_searches_and_thinking_in_one_answer(caplog):
    _, usage = anthropic_wire.finish_response(raw("anthropic-message-billed.json"), "claude", {})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens,
            usage.cache_write_extended_tokens) == (1200 + 40_000 + 3000, 40_000, 3000, 2000)
    assert (usage.output_tokens, usage.reasoning_tokens, usage.web_search_calls) == (900, 600, 3)  # fetches: tokens
    assert (usage.service_tier, usage.speed) == ("priority", "standard")
    # Sonnet has no priority prices of its own: billed at the base (and the pipeline logs it once).
    assert SONNET.unpriced(usage.service_tier, usage.speed) == "priority"
    assert cost(SONNET, usage) == (1200 * 3_000_000          # uncached input
                                   + 40_000 * 300_000        # cache reads
                                   + 1000 * 3_750_000        # 5-minute writes
                                   + 2000 * 6_000_000        # 1-hour writes, at 2x input, not the 5-minute rate
                                   + 900 * 15_000_000        # output, thinking included
                                   ) // 1000 + 3 * 10_000_000 == 74_850_000


def test_an_anthropic_stream_keeps_message_starts_writes_and_speed_and_takes_the_latest_searches():
    usage = stream_usage(anthropic_wire, "anthropic-message-billed-stream.sse")
    assert (usage.cache_write_tokens, usage.cache_write_extended_tokens, usage.web_search_calls,
            usage.reasoning_tokens, usage.output_tokens, usage.speed, usage.estimated) == (
        3000, 2000, 3, 600, 900, "fast", False)
    assert cost(OPUS_FAST, usage) == (1200 * 30_000_000 + 40_000 * 3_000_000 + 1000 * 37_500_000
                                      + 2000 * 60_000_000 + 900 * 150_000_000) // 1000 + 3 * 10_000_000 == 478_500_000


# --- OpenAI ----------------------------------------------------------------------------------------


def test_openai_chat_served_on_flex_is_billed_at_flex_prices():
    _, usage = openai_wire.finish_response(raw("openai-chat-flex.json"), "gpt", {})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens,
            usage.service_tier) == (20_000, 8000, 3000, 2000, "flex")
    assert cost(GPT5, usage) == (12_000 * 625_000 + 8000 * 62_500 + 3000 * 5_000_000) // 1000 == 23_000_000


def test_an_openai_chat_stream_served_on_priority_is_billed_at_priority_prices():
    usage = stream_usage(openai_wire, "openai-chat-priority-stream.sse")
    assert usage.service_tier == "priority"
    assert cost(GPT5, usage) == (12_000 * 2_500_000 + 8000 * 250_000 + 3000 * 20_000_000) // 1000 == 92_000_000


RESPONSES_COST = (8000 * 2_500_000       # uncached: 50,000 - 30,000 cached - 12,000 written
                  + 30_000 * 250_000      # cached reads
                  + 4000 * 2_500_000      # 30-minute writes
                  + 8000 * 5_000_000      # 12-hour writes
                  + 5000 * 20_000_000     # output
                  ) // 1000 + 2 * 10_000_000 + 1 * 2_500_000  # two web searches, one file search
assert RESPONSES_COST == 200_000_000


def test_a_responses_answer_with_both_retentions_and_search_calls_on_priority():
    _, usage = responses_wire.finish_response(raw("openai-responses-billed.json"), "gpt", {})
    assert (usage.cache_write_tokens, usage.cache_write_extended_tokens, usage.web_search_calls,
            usage.file_search_calls, usage.service_tier) == (12_000, 8000, 2, 1, "priority")
    assert cost(GPT5, usage) == RESPONSES_COST


def test_a_responses_answer_served_on_flex_is_billed_at_flex_prices():
    answer = json.loads(raw("openai-responses-billed.json"))
    answer["service_tier"] = "flex"
    _, usage = responses_wire.finish_response(json.dumps(answer).encode(), "gpt", {})
    assert cost(GPT5, usage) == (8000 * 625_000 + 30_000 * 62_500 + 4000 * 625_000 + 8000 * 1_250_000
                                 + 5000 * 5_000_000) // 1000 + 2 * 10_000_000 + 1 * 2_500_000 == 66_875_000


def test_a_responses_stream_counts_the_final_responses_calls_not_the_items_again():
    usage = stream_usage(responses_wire, "openai-responses-billed-stream.sse")
    assert (usage.web_search_calls, usage.file_search_calls, usage.estimated) == (2, 1, False)
    assert cost(GPT5, usage) == RESPONSES_COST


def test_a_responses_stream_cut_before_its_final_response_counts_the_calls_it_saw():
    state = responses_wire.StreamState("public", False, {"input": "x" * 40})
    for raw_event, name, data in events("openai-responses-billed-stream.sse")[:-1]:  # no response.completed
        state.process(raw_event, name, data)
    usage = state.usage()
    assert (usage.web_search_calls, usage.file_search_calls, usage.estimated, usage.service_tier) == (
        2, 1, True, "priority")
    assert (usage.input_tokens, usage.output_tokens) == (10, math.ceil(len("Found it.") / 4))


# --- long context ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt_tokens", "expected"), [
    (272_000, (272_000 * 2_500_000 + 1000 * 15_000_000) // 1000),   # at the threshold: base prices
    (272_001, (272_001 * 5_000_000 + 1000 * 22_500_000) // 1000),   # one above: every token at the tier
])
def test_a_long_context_tier_applies_strictly_above_its_threshold_to_the_whole_request(prompt_tokens, expected):
    answer = json.loads(raw("openai-chat.json"))
    answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": 1000,
                       "total_tokens": prompt_tokens + 1000, "prompt_tokens_details": {"cached_tokens": 0}}
    _, usage = openai_wire.finish_response(json.dumps(answer).encode(), "gpt", {})
    assert cost(LONG, usage) == expected
    assert expected in (695_000_000, 1_382_505_000)


# --- end to end: the official SDKs, the gateway, the mock upstream, the ledger and the pages -------


@pytest.fixture
def billed(gw):
    from gateway.models import ModelFacade

    def facade(name, provider, base_url, upstream_model, prices):
        ModelFacade.objects.create(
            name=name, provider=provider, base_url=base_url, upstream_model=upstream_model,
            input_price_micros=prices.input_micros, cached_input_price_micros=prices.cached_input_micros,
            cache_write_price_micros=prices.cache_write_micros,
            cache_write_extended_price_micros=prices.cache_write_extended_micros,
            output_price_micros=prices.output_micros, web_search_price_micros=prices.web_search_micros,
            file_search_price_micros=prices.file_search_micros, price_rules=prices.to_rules())

    facade("claude-billed", "anthropic", gw.mock_url, "billed-priority", SONNET)
    facade("opus-fast", "anthropic", gw.mock_url, "billed-fast", OPUS_FAST)
    facade("gpt-flex", "openai", f"{gw.mock_url}/v1", "billed-flex", GPT5)
    facade("gpt-billed", "openai", f"{gw.mock_url}/v1", "billed", GPT5)
    gw.server.refresh()
    return gw


PROMPT = "Tell me about exact usage accounting. " * 8


def test_end_to_end_every_billed_quantity_reaches_the_ledger_the_api_and_the_costs(billed, caplog):
    from rest_framework.test import APIClient


    prompt_tokens, output_tokens, _ = counts(PROMPT, "billed-priority")
    with caplog.at_level(logging.WARNING, logger="codevector.gateway"):
        message = billed.anthropic.messages.create(model="claude-billed", max_tokens=64, messages=chat(PROMPT))
        billed.anthropic.messages.create(model="claude-billed", max_tokens=64, messages=chat(PROMPT))
        with billed.anthropic.messages.stream(model="opus-fast", max_tokens=64, messages=chat(PROMPT)) as stream:
            fast = stream.get_final_message()
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == BILLED_WRITES_1H
    assert message.usage.service_tier == "priority"  # Sonnet's facade has no priority prices: base, said once
    assert caplog.text.count("facade claude-billed: the upstream served a request as 'priority'") == 1
    assert fast.usage.speed == "fast" and fast.usage.server_tool_use.web_search_requests == BILLED_WEB_SEARCHES
    _, fast_output, _ = counts(PROMPT, "billed-fast")
    flex = billed.openai.chat.completions.create(model="gpt-flex", messages=chat(PROMPT))
    assert flex.service_tier == "flex"
    response = billed.openai.responses.create(model="gpt-billed", input=PROMPT)
    assert response.service_tier == "priority"
    reads = prompt_tokens // 4  # the mock's Anthropic cache reads

    def anthropic_cost(prices, reads_price, writes_5m, writes_1h, out_price, output, input_price):
        return ((prompt_tokens - reads - 24) * input_price + reads * reads_price + 8 * writes_5m + 16 * writes_1h
                + output * out_price) // 1000 + 2 * 10_000_000

    claude_each = anthropic_cost(SONNET, 300_000, 3_750_000, 6_000_000, 15_000_000, output_tokens, 3_000_000)
    opus_fast = anthropic_cost(OPUS_FAST, 3_000_000, 37_500_000, 60_000_000, 150_000_000, fast_output, 30_000_000)
    flex_prompt, flex_output, _ = counts(PROMPT, "billed-flex")
    flex_cached = flex_prompt // 2  # the mock's chat cache reads
    flex_cost = ((flex_prompt - flex_cached) * 625_000 + flex_cached * 62_500 + flex_output * 5_000_000) // 1000
    r_prompt = response.usage.input_tokens
    r_cached, r_output = r_prompt // 2, response.usage.output_tokens
    responses_cost = ((r_prompt - r_cached - 24) * 2_500_000 + r_cached * 250_000 + 8 * 2_500_000 + 16 * 5_000_000
                      + r_output * 20_000_000) // 1000 + BILLED_WEB_SEARCHES * 10_000_000 \
        + BILLED_FILE_SEARCHES * 2_500_000
    total = 2 * claude_each + opus_fast + flex_cost + responses_cost
    totals = ledger()
    assert (totals["requests"], totals["cache_write_extended_tokens"], totals["web_search_calls"],
            totals["file_search_calls"], totals["estimated_requests"]) == (5, 16 * 4, 2 * 3 + 2, 1, 0)
    assert totals["cost_nanos"] == total
    # The same spend on the caller's own API, to the nanodollar (USD with 9 decimals).
    mine = APIClient()
    mine.credentials(HTTP_AUTHORIZATION=f"Bearer {billed.key}")
    summary = mine.get("/api/me/usage/?period=7d").json()["summary"]
    assert summary["spend_usd"] == f"{total // 10**9}.{total % 10**9:09d}"
    assert (summary["web_search_calls"], summary["cache_write_extended_tokens"]) == (8, 64)
    # The dashboard's Spend card reads the same totals.
    from usage.reads import queries
    assert queries.summary(queries.resolve_window("7d")).totals.cost_nanos == total
    # OpenAI's costs shape: every line item, the searches and extended writes included, adds up exactly.
    from decimal import Decimal

    from django.contrib.auth.models import Permission
    billed.user.is_staff = True
    billed.user.save()
    billed.user.user_permissions.add(Permission.objects.get(codename="view_usage_dashboard"))
    import time
    answer = mine.get(f"/v1/organization/costs?start_time={int(time.time()) - 3 * 86400}&group_by=line_item")
    items = [r for b in json.loads(answer.content, parse_float=Decimal)["data"] for r in b["results"]]
    assert sum(r["amount"]["value"] for r in items) * 10**9 == total
    names = {r["line_item"] for r in items}
    assert {"claude-billed, cache_write_extended_tokens", "claude-billed, web_search_calls",
            "gpt-billed, file_search_calls"} <= names
