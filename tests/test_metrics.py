"""/metrics (gateway.metrics, usage.ledger.metrics): the counts a scrape shows are the requests sent, per
facade and status class, and the tokens and spend the ledger holds, exactly; in one process (the
gateway under uvicorn in a thread) and summed over two gunicorn workers."""

import asyncio
import os
import re
import stat
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from django.contrib.auth.models import User
from django.db.models import Sum
from prometheus_client.parser import text_string_to_metric_families

from gateway.models import ApiKey, ModelFacade
from tests.support.servers import start_gateway, start_mock_upstream
from usage.counters import COUNTERS
from usage.models import FiveMinuteUsage

# Every token counter of the ledger, by its kind label (input, cached_input, cache_write, output, reasoning, ...).
KINDS = {name.removesuffix("_tokens"): name for name in COUNTERS if name.endswith("_tokens")}


def scrape(url: str, token: str | None = None) -> dict:
    """Every sample of /metrics by (name, sorted labels)."""
    request = urllib.request.Request(f"{url}/metrics", headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def status_of(url: str, headers: dict | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def grew(before: dict, after: dict) -> dict:
    """The samples that changed between two scrapes, by how much (counters and histograms' counts)."""
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def counted(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def ledger_by_facade() -> dict:
    """{facade name: {counter: sum}} over the 5-minute table."""
    rows = FiveMinuteUsage.objects.values("facade__name").annotate(
        requests=Sum("requests"), cost=Sum("cost_nanos"), **{kind: Sum(field) for kind, field in KINDS.items()})
    return {row.pop("facade__name"): row for row in rows}


def assert_metrics_equal_the_ledger(growth: dict, ledger: dict) -> None:
    for name, sums in ledger.items():
        for kind in KINDS:
            assert counted(growth, "codevector_tokens_total", facade=name, kind=kind) == sums[kind], (name, kind)
        assert counted(growth, "codevector_spend_nanodollars_total", facade=name) == sums["cost"], name
        assert sum(counted(growth, "codevector_requests_total", facade=name, status=status)
                   for status in ("2xx", "4xx", "5xx")) == sums["requests"], name


# --- one process: the gateway under uvicorn in a thread ------------------------------------------------


@pytest.fixture
def world(transactional_db, gateway_server, mock_upstream):
    dora = User.objects.create_user("dora")
    _, key = ApiKey.objects.create_key(dora, name="metrics")
    for name, provider, base, model in (("gpt-metrics", "openai", f"{mock_upstream.url}/v1", "gpt-4o-mini"),
                                        ("claude-metrics", "anthropic", mock_upstream.url, "claude-sonnet-4-5"),
                                        ("gpt-metrics-500", "openai", f"{mock_upstream.url}/v1", "fail-500")):
        ModelFacade.objects.create(name=name, provider=provider, base_url=base, upstream_model=model,
                                   input_price_micros=3_000_000, cached_input_price_micros=300_000,
                                   cache_write_price_micros=3_750_000, output_price_micros=15_000_000)
    gateway_server.refresh()
    mock_upstream.mock.chunk_delay = 0
    return gateway_server.url, key


def chat(url, key, model, words=1, stream=False):
    body = f'{{"model": "{model}", "stream": {str(stream).lower()}, "messages": [{{"role": "user", "content": ' \
           f'"{"hello " * words}"}}]}}'
    return status_of(f"{url}/v1/chat/completions", {"authorization": f"Bearer {key}"}, body.encode())


def message(url, key, model, words=1):
    body = (f'{{"model": "{model}", "max_tokens": 50, "messages": [{{"role": "user", "content": "{"hi " * words}"}}]}}')
    return status_of(f"{url}/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}, body.encode())


def test_a_scrape_counts_each_request_once_by_facade_and_status_and_equals_the_ledger(world):
    url, key = world
    before = scrape(url)
    statuses = [chat(url, key, "gpt-metrics", words) for words in (1, 40, 300)]
    statuses.append(chat(url, key, "gpt-metrics", 20, stream=True))
    statuses += [message(url, key, "claude-metrics", words) for words in (5, 500)]
    statuses.append(chat(url, key, "gpt-metrics-500"))
    statuses.append(chat(url, "sk-cv-not-a-key", "gpt-metrics"))  # 401
    statuses.append(chat(url, key, "no-such-model"))  # 404, the model's name never a label
    statuses.append(status_of(f"{url}/v1/chat/completions", {"authorization": f"Bearer {key}"}, b"{not json"))
    assert statuses == [200, 200, 200, 200, 200, 200, 500, 401, 404, 400]
    after = scrape(url)
    growth = grew(before, after)

    requests = {labels: value for (name, labels), value in growth.items() if name == "codevector_requests_total"}
    assert requests == {(("facade", "gpt-metrics"), ("status", "2xx")): 4,
                        (("facade", "claude-metrics"), ("status", "2xx")): 2,
                        (("facade", "gpt-metrics-500"), ("status", "5xx")): 1,
                        (("facade", ""), ("status", "4xx")): 3}
    ledger = ledger_by_facade()
    assert {name: sums["requests"] for name, sums in ledger.items()} == {
        "gpt-metrics": 4, "claude-metrics": 2, "gpt-metrics-500": 1}
    assert ledger["gpt-metrics"]["input"] > 0 and ledger["claude-metrics"]["cost"] > 0
    assert {"input", "cached_input", "cache_write", "output", "reasoning"} <= set(KINDS)
    assert_metrics_equal_the_ledger(growth, ledger)
    assert not any("no-such-model" in str(labels) for _, labels in after)

    # Every answered upstream request is timed, to its head and to its end.
    for name, count in (("gpt-metrics", 4), ("claude-metrics", 2), ("gpt-metrics-500", 1)):
        assert counted(growth, "codevector_upstream_seconds_count", facade=name) == count
        assert counted(growth, "codevector_upstream_first_byte_seconds_count", facade=name) == count
        assert (counted(after, "codevector_upstream_first_byte_seconds_sum", facade=name)
                <= counted(after, "codevector_upstream_seconds_sum", facade=name))
        assert counted(growth, "codevector_upstream_seconds_bucket", facade=name, le="+Inf") == count
    # The group commit wrote the 7 deltas in batches whose sizes add up to 7.
    assert counted(growth, "codevector_ledger_batch_size_sum") == 7
    batches = counted(growth, "codevector_ledger_batch_size_count")
    assert 1 <= batches <= 7 and counted(growth, "codevector_ledger_commit_seconds_count") == batches
    # Read at the scrape: no degraded mode, every upstream connection idle again.
    assert counted(after, "codevector_usage_database_down") == 0
    assert counted(after, "codevector_usage_buffer_writable") == 1
    open_connections = counted(after, "codevector_upstream_connections_open")
    assert open_connections == counted(after, "codevector_upstream_connections_idle") and open_connections >= 1
    # Probes and scrapes are not requests.
    assert status_of(f"{url}/healthz") == 200
    assert counted(grew(after, scrape(url)), "codevector_requests_total", facade="", status="2xx") == 0


def test_with_a_token_set_a_scrape_needs_it_as_a_bearer_token(world, settings):
    url, _ = world
    settings.GATEWAY_METRICS_TOKEN = "scrape-me"
    assert status_of(f"{url}/metrics") == 401
    assert status_of(f"{url}/metrics", {"authorization": "Bearer scrape-m"}) == 401
    assert status_of(f"{url}/metrics", {"authorization": "Basic scrape-me"}) == 401
    assert status_of(f"{url}/metrics", {"authorization": "Bearer scrape-me"}) == 200
    assert "codevector_requests_total" in str(scrape(url, "scrape-me"))


def test_observations_counted_until_a_flush_land_in_the_buckets_prometheus_client_would_choose():
    from prometheus_client import CollectorRegistry, Histogram

    from usage.ledger.metrics import PendingHistogram

    registry = CollectorRegistry()
    direct = Histogram("direct", "", buckets=(1, 2, 5), registry=registry)
    pending = PendingHistogram(Histogram("pending", "", buckets=(1, 2, 5), registry=registry))
    for value in (0, 1, 1.5, 2, 4.99, 5, 7, 1000):
        direct.observe(value)
        pending.observe(value)
    assert registry.get_sample_value("pending_count") == 0
    pending.flush()
    pending.flush()  # nothing new: nothing added
    for suffix, labels in (("_bucket", {"le": le}) for le in ("1.0", "2.0", "5.0", "+Inf")):
        assert registry.get_sample_value("pending" + suffix, labels) == registry.get_sample_value("direct" + suffix,
                                                                                                  labels)
    assert registry.get_sample_value("pending_bucket", {"le": "2.0"}) == 4
    assert registry.get_sample_value("pending_sum") == registry.get_sample_value("direct_sum") == 1021.49


# --- two gunicorn workers, one metrics directory -------------------------------------------------------


def started_workers(log: Path) -> int:
    return len(re.findall(r"Application startup complete", log.read_text(errors="replace")))


def metrics_directory(master_pid: int) -> Path:
    """The directory gunicorn.conf.py made, from the files a worker has mapped."""
    import subprocess

    for pid in subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True).stdout.split():
        maps = Path(f"/proc/{pid}/maps").read_text()
        found = re.search(r"(/\S*codevector-metrics-[^/\s]+)/\w+\.db", maps)
        if found:
            return Path(found.group(1))
    raise AssertionError("no worker has a metrics file mapped")


async def load(url: str, key: str, models: list[str], in_flight: int = 32) -> tuple[Counter, set[str]]:
    """Every model's requests, `in_flight` at a time, each on a new connection (so both workers
    accept some): (200s per model, the request ids' per-process prefixes)."""
    ok, prefixes = Counter(), set()
    semaphore = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async def one(index, model):
            body = {"model": model, "messages": [{"role": "user", "content": "count me " * (index % 17)}],
                    "stream": index % 3 == 0}
            async with semaphore, session.post(f"{url}/v1/chat/completions", json=body,
                                               headers={"authorization": f"Bearer {key}"}) as response:
                await response.read()
                ok[model] += response.status == 200
                prefixes.add(response.headers["x-codevector-request-id"][:20])
        await asyncio.gather(*(one(index, model) for index, model in enumerate(models)))
    return ok, prefixes


@pytest.mark.postgres_only
def test_two_gunicorn_workers_are_summed_and_equal_the_ledger(test_database_url, tmp_path):
    mock, mock_url = start_mock_upstream(tmp_path)
    gateway = None
    try:
        erin = User.objects.create_user("erin")
        _, key = ApiKey.objects.create_key(erin, name="metrics")
        names = ["gpt-a", "gpt-b", "gpt-c"]
        for index, name in enumerate(names):
            ModelFacade.objects.create(name=name, provider="openai", base_url=f"{mock_url}/v1",
                                       upstream_model="gpt-4o-mini", input_price_micros=150_000 * (index + 1),
                                       cached_input_price_micros=75_000, output_price_micros=600_000 * (index + 1))
        gateway, url = start_gateway(test_database_url, tmp_path, workers=2)
        deadline = time.monotonic() + 30
        while started_workers(gateway.log) < 2:
            assert time.monotonic() < deadline, "two workers did not start"
            time.sleep(0.1)
        directory = metrics_directory(gateway.proc.pid)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700

        models = [names[index % 3] for index in range(200)] + ["gpt-a"] * 10
        ok, prefixes = asyncio.run(load(url, key, models))
        assert ok == {"gpt-a": 77, "gpt-b": 67, "gpt-c": 66}
        assert len(prefixes) == 2, "both workers served requests"
        def requests_in(samples):
            return {dict(labels)["facade"]: value for (name, labels), value in samples.items()
                    if name == "codevector_requests_total"}

        # The worker that answers a scrape adds its own counts first; the other adds its own every second.
        deadline = time.monotonic() + 10
        while requests_in(scrape(url)) != {"gpt-a": 77, "gpt-b": 67, "gpt-c": 66}:
            assert time.monotonic() < deadline, f"the scrapes show {requests_in(scrape(url))}"
            time.sleep(0.2)
        for _ in range(4):  # whichever worker answers the scrape, it reads both workers' files
            samples = scrape(url)
            requests = requests_in(samples)
            assert requests == {"gpt-a": 77, "gpt-b": 67, "gpt-c": 66}
            ledger = ledger_by_facade()
            assert {name: sums["requests"] for name, sums in ledger.items()} == requests
            assert_metrics_equal_the_ledger(samples, ledger)
            assert counted(samples, "codevector_ledger_batch_size_sum") == 210
            assert counted(samples, "codevector_usage_database_down") == 0
            assert counted(samples, "codevector_usage_buffer_writable") == 1
        assert gateway.stop() == 0
        assert not directory.exists(), "gunicorn.conf.py's on_exit removes the metrics directory"
        gateway = None
    finally:
        if gateway is not None:
            gateway.stop()
        mock.stop()
