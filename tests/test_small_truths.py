"""Small claims the README makes, each checked against the real thing: upstream timeouts answered
with the documented status and code, no upstream cookie reaching a caller, a price change applying
to later requests only, and SQLite's durability setting on the ledger's connection."""

import asyncio
import json
import socket
import time
import urllib.request

import openai
import pytest
from django.db import connections

from gateway.models import ModelFacade
from tests.test_gateway_app import GPT, chat, expected, facade, gw, ledger, post  # noqa: F401 (gw)
from usage.ledger.writers import ThreadWriter
from usage.money import usd_exact
from usage.pricing import Prices, cost_nanos

# --- upstream timeouts: connect (unreachable, 502) versus read (slow, 504) ---------------------


@pytest.fixture
def blackhole():
    """A loopback port that neither accepts nor refuses a connection: a listening socket with a
    backlog of 0 whose accept queue is already full, so the kernel drops a new SYN and connect()
    just waits. Yields the port once a probe connect has been seen to time out."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(16):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(0.3)
            fillers.append(probe)
            try:
                probe.connect(address)  # accepted into the queue: one fewer place left
            except TimeoutError:
                break  # the queue is full: connects now hang
        else:
            pytest.fail("could not fill the accept queue of a backlog-0 socket")
        yield address[1]
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def error_of(exc: openai.APIStatusError) -> dict:
    return exc.response.json()["error"]


def test_a_connect_timeout_is_a_502_unreachable_and_an_error(gw, settings, blackhole):
    settings.GATEWAY_CONNECT_TIMEOUT = 0.5
    facade("gpt-blackhole", "openai", f"http://127.0.0.1:{blackhole}/v1", "gpt-4o-mini", GPT)
    gw.server.refresh()
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai.chat.completions.create(model="gpt-blackhole", messages=chat())
    elapsed = time.monotonic() - started
    assert info.value.status_code == 502
    assert error_of(info.value)["code"] == "upstream_unreachable"
    assert "UpstreamConnectTimeout" in error_of(info.value)["message"]
    assert 0.5 <= elapsed < 5  # it waited for the connect timeout, not for a refusal
    assert ledger() == expected(errors=1)


def test_a_read_timeout_is_a_504_upstream_timeout_and_an_error(gw, settings):
    settings.GATEWAY_READ_TIMEOUT = 0.5
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai.chat.completions.create(model="gpt-fail-timeout", messages=chat())
    assert info.value.status_code == 504
    assert error_of(info.value)["code"] == "upstream_timeout"
    assert ledger() == expected(errors=1)


# --- no upstream cookie reaches a caller -------------------------------------------------------


def test_the_upstreams_set_cookie_never_reaches_the_caller(gw):
    body = {"model": "gpt-4o-mini", "messages": chat()}
    direct = urllib.request.Request(f"{gw.mock_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                    method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(direct, timeout=20) as response:
        assert response.headers.get_all("set-cookie") == ["mock_session=abc; Path=/"]  # the mock sends one
    for stream in (False, True):
        status, headers, _ = post(gw, "/v1/chat/completions",
                                  json.dumps({**body, "model": "gpt-test", "stream": stream}).encode())
        assert status == 200
        assert "set-cookie" not in {name.lower() for name in headers}, stream
    assert ledger()["requests"] == 2


# --- a price change applies to later requests only ---------------------------------------------


NEW_GPT = Prices(input_micros=300_000, cached_input_micros=120_000, output_micros=1_250_000)


def openai_cost(prices: Prices, usage) -> int:
    return cost_nanos(prices, input_tokens=usage.prompt_tokens,
                      cached_input_tokens=usage.prompt_tokens_details.cached_tokens,
                      cache_write_tokens=0, output_tokens=usage.completion_tokens)


def test_a_price_change_applies_to_later_requests_only(gw):
    first = gw.openai.chat.completions.with_raw_response.create(model="gpt-test", messages=chat())
    ModelFacade.objects.filter(name="gpt-test").update(
        input_price_micros=NEW_GPT.input_micros, cached_input_price_micros=NEW_GPT.cached_input_micros,
        output_price_micros=NEW_GPT.output_micros)
    gw.server.refresh()
    second = gw.openai.chat.completions.with_raw_response.create(model="gpt-test", messages=chat())

    old_cost, new_cost = openai_cost(GPT, first.parse().usage), openai_cost(NEW_GPT, second.parse().usage)
    assert old_cost != openai_cost(NEW_GPT, first.parse().usage)  # the prices really differ on this usage
    assert first.headers["x-codevector-cost-usd"] == usd_exact(old_cost)
    assert second.headers["x-codevector-cost-usd"] == usd_exact(new_cost)
    assert ledger()["cost_nanos"] == old_cost + new_cost  # the first delta was not repriced
    assert ledger()["requests"] == 2


# --- SQLite's durability ------------------------------------------------------------------------


@pytest.mark.sqlite_only  # deselected on a PostgreSQL run (tests/conftest.py), never skipped
@pytest.mark.django_db(transaction=True)
def test_sqlites_ledger_connection_runs_wal_with_synchronous_normal():
    """What SQLite promises (codevector/settings.py): WAL with synchronous=NORMAL. A committed
    ledger write survives an application crash; after a power loss or an OS crash, the last
    transactions before the WAL's checkpoint may be rolled back (FULL would fsync every commit)."""
    def pragmas():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                journal = cursor.fetchone()[0]
                cursor.execute("PRAGMA synchronous")
                return journal, cursor.fetchone()[0]
        finally:
            connections.close_all()

    async def on_the_ledgers_thread():
        writer = ThreadWriter()  # the gateway's SQLite writer (usage.ledger.writers.make_writer)
        try:
            return await asyncio.get_running_loop().run_in_executor(writer.executor, pragmas)
        finally:
            await writer.close()

    assert asyncio.run(on_the_ledgers_thread()) == ("wal", 1)  # 1: NORMAL (0 OFF, 2 FULL, 3 EXTRA)
