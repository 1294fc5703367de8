"""Budgets enforced by the gateway: headers under the cap, 429 at it, defaults, warnings, resets,
and a bounded overshoot under concurrency."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import anthropic
import openai
import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from django.test import override_settings

from gateway.models import ApiKey, ModelFacade
from usage.budgets.book import BudgetBook, BudgetSnapshot
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import FiveMinuteUsage

PROMPT = [{"role": "user", "content": "What does this cost?"}]


@pytest.fixture
def gw(transactional_db, gateway_server, mock_upstream):
    erin = User.objects.create_user("erin")
    _, key = ApiKey.objects.create_key(erin)
    ModelFacade.objects.create(name="gpt-b", provider="openai", base_url=f"{mock_upstream.url}/v1",
                               upstream_model="gpt-4o-mini", input_price_micros=150_000_000,
                               output_price_micros=600_000_000)  # expensive, so caps are reached fast
    ModelFacade.objects.create(name="claude-b", provider="anthropic", base_url=mock_upstream.url,
                               upstream_model="claude-haiku", input_price_micros=100_000_000,
                               output_price_micros=500_000_000)
    mock_upstream.mock.chunk_delay = 0
    oa = openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key=key, max_retries=0, timeout=20)
    an = anthropic.Anthropic(base_url=gateway_server.url, api_key=key, max_retries=0, timeout=20)
    yield erin, key, gateway_server, oa, an
    oa.close()
    an.close()


def spend(user):
    return FiveMinuteUsage.objects.filter(user=user).aggregate(s=Sum("cost_nanos"))["s"] or 0


def test_under_the_cap_responses_carry_the_budget_headers(gw):
    erin, _, server, oa, _ = gw
    set_budget(username="erin", period="daily", amount_usd=Decimal("10"), warn_percent=None, active=True)
    set_budget(username="erin", period="monthly", amount_usd=Decimal("100"), warn_percent=None, active=True)
    server.refresh()
    first = oa.chat.completions.with_raw_response.create(model="gpt-b", messages=PROMPT)
    second = oa.chat.completions.with_raw_response.create(model="gpt-b", messages=PROMPT)
    spent_before_second = spend(erin) - int(Decimal(first.headers["x-codevector-cost-usd"]) * 10**9)
    assert first.headers["x-codevector-budget-limit-usd"] == "10.000000000"
    assert Decimal(second.headers["x-codevector-budget-remaining-usd"]) == Decimal(10) - Decimal(spent_before_second) / 10**9
    reset = datetime.fromisoformat(second.headers["x-codevector-budget-reset"])
    assert reset.utcoffset() is not None and reset > datetime.now(UTC)
    assert "x-codevector-budget-warning" not in second.headers


def test_at_the_cap_requests_fail_with_429_budget_exceeded_in_each_format(gw):
    erin, _, server, oa, an = gw
    set_budget(username="erin", period="total", amount_usd=Decimal("0.000001"), warn_percent=50, active=True)
    server.refresh()
    oa.chat.completions.create(model="gpt-b", messages=PROMPT)  # starts under the cap, ends over it
    spent = spend(erin)
    with pytest.raises(openai.RateLimitError) as info:
        oa.chat.completions.create(model="gpt-b", messages=PROMPT)
    error = info.value.body
    assert (error["type"], error["code"], error["param"]) == ("budget_exceeded", "budget_exceeded", None)
    assert "total budget is $0.000001000" in error["message"] and "does not reset" in error["message"]
    assert info.value.response.headers["x-codevector-budget-remaining-usd"] == "0.000000000"
    assert "x-codevector-budget-reset" not in info.value.response.headers
    with pytest.raises(anthropic.RateLimitError) as info:
        an.messages.create(model="claude-b", max_tokens=5, messages=PROMPT)
    assert info.value.body == {"type": "error", "error": {"type": "budget_exceeded",
                                                          "message": info.value.body["error"]["message"]}}
    assert spend(erin) == spent  # refusals record nothing


def test_a_default_budget_applies_to_users_without_their_own(gw):
    erin, _, server, oa, _ = gw
    frank = User.objects.create_user("frank")
    _, frank_key = ApiKey.objects.create_key(frank)
    set_budget(username=None, period="daily", amount_usd=Decimal("0.000001"), warn_percent=None, active=True)
    set_budget(username="frank", period="daily", amount_usd=Decimal("1000"), warn_percent=None, active=True)
    server.refresh()
    oa.chat.completions.create(model="gpt-b", messages=PROMPT)
    with pytest.raises(openai.RateLimitError):
        oa.chat.completions.create(model="gpt-b", messages=PROMPT)
    frank_client = openai.OpenAI(base_url=oa.base_url, api_key=frank_key, max_retries=0)
    for _ in range(3):
        frank_client.chat.completions.create(model="gpt-b", messages=PROMPT)


def test_the_warning_header_appears_past_the_threshold(gw):
    erin, _, server, oa, _ = gw
    set_budget(username="erin", period="weekly", amount_usd=Decimal("1"), warn_percent=1, active=True)
    server.refresh()
    first = oa.chat.completions.with_raw_response.create(model="gpt-b", messages=PROMPT)
    assert "x-codevector-budget-warning" not in first.headers
    assert spend(erin) * 100 >= 1 * 10**9  # one request passes 1% of $1
    second = oa.chat.completions.with_raw_response.create(model="gpt-b", messages=PROMPT)
    assert second.headers["x-codevector-budget-warning"] == "true"


def test_inactive_budgets_do_not_block(gw):
    erin, _, server, oa, _ = gw
    set_budget(username="erin", period="daily", amount_usd=Decimal("0"), warn_percent=None, active=False)
    server.refresh()
    assert oa.chat.completions.create(model="gpt-b", messages=PROMPT).model == "gpt-b"


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_each_period_resets_at_its_local_boundary(transactional_db, zone, gpt):
    """The budget book at injected times: spend just before a boundary counts, just after it does not."""
    tz = ZoneInfo(zone)
    ursula = User.objects.create_user("ursula")
    for period in ("daily", "weekly", "monthly"):
        set_budget(username="ursula", period=period, amount_usd=Decimal("1"), warn_percent=None, active=True)
    # Sunday 2026-11-29 23:59:59 local time: the last second of a day, a week and (in Kolkata's
    # case too) not of the month; then Monday 2026-11-30 00:00 and Tuesday 2026-12-01 00:00.
    last_second = datetime(2026, 11, 29, 23, 59, 59, tzinfo=tz)
    monday = datetime(2026, 11, 30, 0, 0, tzinfo=tz)
    december = datetime(2026, 12, 1, 0, 0, tzinfo=tz)
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=ursula.pk, facade_id=gpt.pk, at=last_second - timedelta(seconds=30),
                            cost_nanos=400_000_000)])
    with override_settings(TIME_ZONE=zone):
        book = BudgetBook()

        def spent_at(moment):
            book.refresh(now=moment)
            return {s.rule.period: s.spend_nanos for s in book.states(ursula.pk, moment)}

        assert spent_at(last_second) == {"daily": 400_000_000, "weekly": 400_000_000, "monthly": 400_000_000}
        assert spent_at(monday) == {"daily": 0, "weekly": 0, "monthly": 400_000_000}
        assert spent_at(december) == {"daily": 0, "weekly": 0, "monthly": 0}
        # Local spend recorded since a refresh counts at once, and only in the period it falls in.
        book.refresh(now=last_second)
        book.add_spend(ursula.pk, last_second, 100_000_000)
        assert {s.rule.period: s.spend_nanos for s in book.states(ursula.pk, last_second)}["daily"] == 500_000_000
        assert {s.rule.period: s.spend_nanos for s in book.states(ursula.pk, monday)}["daily"] == 0


def test_a_snapshot_read_elsewhere_keeps_the_spend_recorded_since_its_read_began(transactional_db, gpt):
    """The gateway reads a snapshot in its database thread and installs it later on its event loop:
    what the process recorded after the read began stays counted at install (the read may have
    missed it); what it recorded before the read began is in the snapshot and dropped."""
    vera = User.objects.create_user("vera")
    set_budget(username="vera", period="total", amount_usd=Decimal("1"), warn_percent=None, active=True)
    now = datetime.now(UTC)
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=vera.pk, facade_id=gpt.pk, at=now, cost_nanos=300_000_000)])
    book = BudgetBook()
    assert not book.loaded and book.states(vera.pk, now) == []  # nothing installed: no budget known yet
    book.install(BudgetSnapshot.read(now))  # as the gateway does before it serves
    assert book.loaded and [s.spend_nanos for s in book.states(vera.pk, now)] == [300_000_000]
    snapshot = BudgetSnapshot.read(now)
    book.add_spend(vera.pk, now, 50_000_000)  # recorded (committed) after the read began
    book.install(snapshot)
    assert [s.spend_nanos for s in book.states(vera.pk, now)] == [350_000_000]
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=vera.pk, facade_id=gpt.pk, at=now, cost_nanos=50_000_000)])
    book.install(BudgetSnapshot.read(now))  # the next read holds it: the local entry goes
    assert [s.spend_nanos for s in book.states(vera.pk, now)] == [350_000_000]
    assert book.check(vera.pk, now).refusal is None
    book.add_spend(vera.pk, now, 700_000_000)
    assert [s.spend_nanos for s in book.states(vera.pk, now)] == [1_050_000_000]
    assert book.check(vera.pk, now).refusal is not None


def test_concurrent_clients_overshoot_the_cap_by_at_most_the_requests_in_flight(gw):
    erin, key, server, oa, _ = gw
    cap = Decimal("0.05")
    set_budget(username="erin", period="daily", amount_usd=cap, warn_percent=None, active=True)
    server.refresh()

    async def hammer():
        client = openai.AsyncOpenAI(base_url=oa.base_url, api_key=key, max_retries=0, timeout=20)
        costs, refused = [], 0

        async def one_client():
            nonlocal refused
            for _ in range(20):
                try:
                    raw = await client.chat.completions.with_raw_response.create(model="gpt-b", messages=PROMPT)
                    costs.append(int(Decimal(raw.headers["x-codevector-cost-usd"]) * 10**9))
                except openai.RateLimitError:
                    refused += 1
                    return

        await asyncio.gather(*(one_client() for _ in range(50)))
        await client.close()
        return costs, refused

    costs, refused = asyncio.run(hammer())
    total = spend(erin)
    cap_nanos = int(cap * 10**9)
    excess = total - cap_nanos
    print(f"budget overshoot with 50 concurrent clients: {excess} nanodollars over a cap of {cap_nanos} "
          f"({len(costs)} requests served, {refused} refused)")
    assert total == sum(costs) and refused == 50
    assert total >= cap_nanos
    assert excess <= 50 * max(costs)  # the documented bound: the requests in flight when the cap was crossed
