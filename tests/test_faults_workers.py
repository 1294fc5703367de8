"""Faults under real gunicorn workers: SIGKILL and SIGTERM under load, a worker killed during a
database outage, budgets enforced across workers, and API keys over time (revocation, expiry,
the negative cache, the look-up rate).

Everything is real: gunicorn with uvicorn workers in a subprocess, real signals, the mock
upstream in a subprocess, a private PostgreSQL cluster of the test's own (the shared server is
never stopped), and the ledger read back with exact integer sums.
"""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiohttp
import psycopg
import pytest

from gateway.models import KEY_PREFIX, VISIBLE_PREFIX_LENGTH, hash_key
from tests.support.pg_cluster import PrivateCluster
from tests.support.servers import manage, start_gateway, start_mock_upstream

pytestmark = [pytest.mark.postgres_only, pytest.mark.xdist_group("faults")]

MODEL = "gpt-w"
NANOS_PER_USD = 10**9


# --- the world: a private cluster, a migrated database, a user, a facade, a key ----------------------


@pytest.fixture
def cluster():
    cluster = PrivateCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def make_world(cluster, workdir: Path, *mock_args: str, input_price_micros: int = 150_000,
               output_price_micros: int = 600_000):
    """(database url, raw key, mock process, mock url). Prices are micro-USD per million tokens."""
    url = cluster.create_database("codevector")
    manage(url, "migrate", "-v0")
    mock, mock_url = start_mock_upstream(workdir, *mock_args)
    key = manage(url, "shell", "-c", "\n".join([
        "from django.contrib.auth.models import User",
        "from gateway.models import ApiKey, ModelFacade",
        "user = User.objects.create_user('dave')",
        f"ModelFacade.objects.create(name={MODEL!r}, provider='openai', base_url={mock_url + '/v1'!r}, "
        f"input_price_micros={input_price_micros}, output_price_micros={output_price_micros})",
        "print(ApiKey.objects.create_key(user)[1])",
    ])).strip().splitlines()[-1]
    return url, key, mock, mock_url


def totals(url):
    """(requests, output tokens, cost in nanodollars) over the whole ledger."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        return tuple(int(v) for v in conn.execute(
            "SELECT coalesce(sum(requests),0), coalesce(sum(output_tokens),0), coalesce(sum(cost_nanos),0) "
            "FROM usage_bucket_5min").fetchone())


def forwarded(mock_url) -> int:
    """How many requests the mock upstream received (it keeps the last 1000)."""
    import urllib.request

    with urllib.request.urlopen(f"{mock_url}/_mock/requests", timeout=10) as response:
        return len(json.loads(response.read()))


def wait_until(predicate, seconds: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(interval)


# --- gunicorn's workers ------------------------------------------------------------------------------


def workers_of(master_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master_pid)], capture_output=True, text=True, timeout=10).stdout
    return sorted(int(pid) for pid in out.split())


def started_workers(gateway) -> set[int]:
    """Workers whose application startup completed (uvicorn logs it, with gunicorn's [pid] prefix)."""
    return {int(pid) for pid in re.findall(r"\] \[(\d+)\] \[INFO\] Application startup complete", gateway.output())}


def wait_for_workers(gateway, count: int, seconds: float = 30.0) -> list[int]:
    """Wait until the master has `count` workers, each of which has finished starting."""
    def ready():
        pids = workers_of(gateway.proc.pid)
        return pids if len(pids) == count and set(pids) <= started_workers(gateway) else None

    return wait_until(ready, seconds, f"{count} started gunicorn workers")


def client_ports(pid: int, port: int) -> set[int]:
    """The peer ports of the established TCP connections to `port` that process `pid` holds: the
    local ports of the clients it is serving now."""
    peers = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01":
                peers[fields[9]] = int(fields[2].split(":")[1], 16)
    ports = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in peers:
                ports.add(peers[target[8:-1]])
    except FileNotFoundError:
        return set()
    return ports


def established_connections(pid: int, port: int) -> int:
    """Established TCP connections to `port` that process `pid` holds (what it is serving now)."""
    return len(client_ports(pid, port))


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


# --- a client that records exactly what each request got ---------------------------------------------


@dataclass
class Answer:
    index: int
    stream: bool
    sent: float  # monotonic, just before the request is sent
    status: int | None = None  # None: no HTTP response at all
    headers_at: float | None = None
    done_at: float | None = None
    whole: bool = False  # a 200 with a complete body (JSON with usage, or a stream through [DONE])
    output_tokens: int = 0
    cost_nanos: int | None = None
    request_id: str | None = None
    error_type: str | None = None
    error: str | None = None
    body: bytes = b""  # the body of an answer other than 200
    port: int | None = None  # the client's local port (own_connection), which the serving worker sees

    @property
    def process(self) -> str | None:
        """The answering process: request ids are a random per-process prefix plus a counter."""
        return self.request_id[:20] if self.request_id else None


def chat_body(prompt: str, stream: bool) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def _parse(answer: Answer, data: bytes) -> None:
    if answer.status != 200:
        return
    try:
        if answer.stream:
            if not data.endswith(b"data: [DONE]\n\n"):
                return
            usage = None
            for event in data.split(b"\n\n"):
                if event.startswith(b"data: {"):
                    usage = json.loads(event[6:]).get("usage") or usage
            if usage is None:
                return
            answer.output_tokens = usage["completion_tokens"]
        else:
            answer.output_tokens = json.loads(data)["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return
    answer.whole = True


def new_session() -> aiohttp.ClientSession:
    # A connection of its own per request: no keep-alive connection to be closed under a request.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


async def on_own_connection(base_url: str, key: str, index: int, **kwargs) -> Answer:
    """`chat` on a session and connection of its own, whose local port is known before a byte is
    sent (bound by the socket factory): the gateway worker serving it holds a connection from it."""
    ports = []

    def socket_factory(addr_info):
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family, kind, proto)
        sock.bind(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        return sock

    connector = aiohttp.TCPConnector(force_close=True, limit=0, socket_factory=socket_factory)
    async with aiohttp.ClientSession(connector=connector) as session:
        answer = await chat(session, base_url, key, index, **kwargs)
    [answer.port] = ports
    return answer


async def chat(session, base_url: str, key: str, index: int, *, stream: bool, prompt: str,
               timeout: float = 30.0) -> Answer:
    answer = Answer(index, stream, time.monotonic())
    try:
        async with session.post(f"{base_url}/v1/chat/completions", json=chat_body(prompt, stream),
                                headers={"authorization": f"Bearer {key}"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            answer.status, answer.headers_at = response.status, time.monotonic()
            answer.request_id = response.headers.get("x-codevector-request-id")
            cost = response.headers.get("x-codevector-cost-usd")
            if cost is not None:
                answer.cost_nanos = int(Decimal(cost) * NANOS_PER_USD)
            data = await response.read()
            answer.done_at = time.monotonic()
            if answer.status != 200:
                answer.body = data[:1000]
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        answer.error_type, answer.error = type(exc).__name__, str(exc)[:200]
        return answer
    _parse(answer, data)
    return answer


def models_status(base_url: str, key: str, timeout: float = 5.0) -> int:
    """GET /v1/models: authentication alone, nothing forwarded, nothing recorded."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{base_url}/v1/models", headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def stream_prompt(index: int) -> str:
    # The mock streams its reply a word per event ("Mock reply from <model>: <first 40 characters>"):
    # a prompt of short words makes ~12 events, ~250 ms at 20 ms an event.
    return f"s{index} a b c d e f g h i j k l m n o p q r"


# --- 1. SIGKILL under load -----------------------------------------------------------------------------


def make_keys(url: str, count: int) -> list[str]:
    """`count` more keys of the world's user, named r0, r1, ...: one per request, so the ledger's
    rows by key say which requests were counted, and with what."""
    return manage(url, "shell", "-c", "\n".join([
        "from django.contrib.auth.models import User",
        "from gateway.models import ApiKey",
        "user = User.objects.get(username='dave')",
        f"for i in range({count}): print(ApiKey.objects.create_key(user, name=f'r{{i}}')[1])",
    ])).strip().splitlines()[-count:]


def totals_by_key_name(url) -> dict[str, tuple[int, int]]:
    """{key name: (requests, output tokens)} over the whole ledger."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT k.name, sum(b.requests), sum(b.output_tokens) FROM usage_bucket_5min b "
                            "JOIN gateway_apikey k ON k.id = b.key_id GROUP BY k.name").fetchall()
    return {name: (int(requests), int(output)) for name, requests, output in rows}


def full_replies(mock_url: str, prompts: dict[int, str]) -> dict[int, int]:
    """{index: the output tokens of the whole reply the upstream gives that prompt}, asked of the mock
    directly with the body the gateway forwards (its upstream model, not streamed)."""
    import urllib.request

    with urllib.request.urlopen(f"{mock_url}/_mock/requests", timeout=10) as response:
        model = json.loads(response.read())[0]["body"]["model"]

    async def ask():
        async with aiohttp.ClientSession() as session:
            async def one(prompt):
                body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
                async with session.post(f"{mock_url}/v1/chat/completions", json=body) as response:
                    return (await response.json())["usage"]["completion_tokens"]

            indexes = list(prompts)
            tokens = await asyncio.gather(*(one(prompts[i]) for i in indexes))
            return dict(zip(indexes, tokens))

    return asyncio.run(ask())


@pytest.mark.timeout(120)
def test_sigkill_of_a_worker_under_load_loses_no_whole_answer_and_its_replacement_serves(cluster, tmp_path):
    """Breaks caught: a whole answer not counted, or counted with other tokens (the per-key rows); a
    request counted for more than its upstream's whole reply; a request of the surviving worker cut
    or counted as cut (a kill that reaches beyond the victim)."""
    url, key, mock, mock_url = make_world(cluster, tmp_path, "--delay-ms", "100", "--stream-chunk-delay-ms", "20")
    count = 40
    keys = make_keys(url, count)
    gateway, base_url = start_gateway(url, tmp_path, workers=2)
    port = port_of(base_url)
    prompts = {i: stream_prompt(i) if i % 2 else f"plain {i}" for i in range(count)}
    try:
        original = wait_for_workers(gateway, 2)

        async def load():
            tasks = []
            for i in range(count):  # a few ms apart, so both workers take some
                tasks.append(asyncio.create_task(on_own_connection(base_url, keys[i], i, stream=bool(i % 2),
                                                                   prompt=prompts[i])))
                await asyncio.sleep(0.004)
            # Kill once answers flow, the worker holding the most requests in flight right then.
            deadline = time.monotonic() + 20
            while not any(t.done() and t.result().whole for t in tasks):
                assert time.monotonic() < deadline, "no answer came back"
                await asyncio.sleep(0.01)
            busy = {pid: established_connections(pid, port) for pid in original}
            victim = max(busy, key=busy.get)
            # Stopped first, so it accepts nothing more: the connections it holds now are all it
            # will ever have, and the kill cuts exactly those.
            os.kill(victim, signal.SIGSTOP)
            victims_clients = client_ports(victim, port)
            os.kill(victim, signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*tasks), 60), victim, busy, victims_clients

        answers, victim, busy, victims_clients = asyncio.run(load())
        assert busy[victim] > 0 and victims_clients, f"the killed worker served nothing at the time: {busy}"
        whole = [a for a in answers if a.whole]
        cut = [a for a in answers if not a.whole]
        assert whole and cut, f"the kill should cut some requests and spare others: {len(whole)} whole, {len(cut)} cut"
        # Every cut request was the killed worker's: the other finished all of its own.
        assert [a.index for a in cut if a.port not in victims_clients] == []
        # Nothing answered is anything but a whole 200: a cut request got no status, or a 200 cut mid-stream.
        assert all(a.status in (None, 200) for a in answers), [(a.status, a.error) for a in answers]

        requests, output_tokens, _ = totals(url)
        by_key = totals_by_key_name(url)
        upstream_seen = forwarded(mock_url)  # before the test asks the mock itself
        replies = full_replies(mock_url, {a.index: prompts[a.index] for a in cut})
        # Every whole answer was counted before it ended, once, with the tokens its client was told.
        assert {f"r{a.index}": by_key.get(f"r{a.index}") for a in whole} == {
            f"r{a.index}": (1, a.output_tokens) for a in whole}
        # A request the kill cut may or may not have been counted (the window the README names), once
        # at most and never for more than its upstream's whole reply; each one counted was the killed
        # worker's.
        counted_cut = {a.index: by_key[f"r{a.index}"] for a in cut if f"r{a.index}" in by_key}
        assert all(n == 1 and tokens <= replies[index] for index, (n, tokens) in counted_cut.items()), \
            (counted_cut, replies)
        assert all(a.port in victims_clients for a in cut if a.index in counted_cut)
        assert requests == len(whole) + len(counted_cut) <= upstream_seen <= len(answers)
        assert sum(a.output_tokens for a in whole) <= output_tokens <= (
            sum(a.output_tokens for a in whole) + sum(replies.values()))

        # gunicorn replaces the worker; the replacement alone serves the next request (the surviving
        # original worker is stopped meanwhile, so it cannot take the connection).
        now = wait_for_workers(gateway, 2)
        survivor = [pid for pid in original if pid != victim]
        replacement = [pid for pid in now if pid not in original]
        assert victim not in now and len(replacement) == 1 and len(survivor) == 1
        os.kill(survivor[0], signal.SIGSTOP)
        try:
            async def after():
                async with new_session() as session:
                    return await chat(session, base_url, key, 99, stream=True, prompt=stream_prompt(99), timeout=15)

            late = asyncio.run(after())
        finally:
            os.kill(survivor[0], signal.SIGCONT)
        assert late.status == 200 and late.whole, late
    finally:
        exit_code = gateway.stop()
        mock.stop()
    assert exit_code == 0
    assert totals(url)[:2] == (requests + 1, output_tokens + late.output_tokens)


# --- 2. a worker killed with buffered deltas during an outage ------------------------------------------


def buffer_files(directory: Path, suffix: str = "") -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(suffix)) if directory.is_dir() else []


def pid_of_buffer_file(path: Path) -> int:
    return int(path.name.split("_")[-3])  # <host>_<pid>_<started>_<seq>.open


def buffered_deltas(path: Path) -> int:
    from usage.degraded.buffer import decode

    return len(decode(path.read_bytes()).deltas)


@pytest.mark.timeout(120)
def test_a_worker_killed_with_buffered_usage_during_an_outage_is_drained_by_another_process(cluster, tmp_path):
    url, key, mock, mock_url = make_world(cluster, tmp_path, "--stream-chunk-delay-ms", "20")
    buffer_dir = tmp_path / "usage-buffer"
    gateway, base_url = start_gateway(url, tmp_path, workers=2, env={
        "USAGE_DB_RETRY_SECONDS": "0.3", "USAGE_DRAIN_INTERVAL_SECONDS": "0.3", "USAGE_DB_TIMEOUT_SECONDS": "1"})
    try:
        original = wait_for_workers(gateway, 2)  # both have their keys: the database is up as they start
        cluster.stop("fast")

        async def load():
            async with new_session() as session:
                tasks = []
                for i in range(24):  # a few ms apart, so both workers take some
                    tasks.append(asyncio.create_task(chat(session, base_url, key, i, stream=bool(i % 2),
                                                          prompt=stream_prompt(i) if i % 2 else f"p{i}")))
                    await asyncio.sleep(0.004)
                return await asyncio.wait_for(asyncio.gather(*tasks), 60)

        answers = asyncio.run(load())
        assert all(a.status == 200 and a.whole for a in answers), [(a.status, a.error) for a in answers]

        open_files = {pid_of_buffer_file(p): p for p in buffer_files(buffer_dir, ".open")}
        holding = {pid: buffered_deltas(path) for pid, path in open_files.items() if pid in original}
        # Every delta answered in the outage is in some worker's open file, fsynced before its answer.
        assert sum(holding.values()) == len(answers), holding
        victim = max(holding, key=holding.get)
        victim_file = open_files[victim]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in workers_of(gateway.proc.pid), 10, "the killed worker to be reaped")
        assert victim_file.exists(), "the dead worker's open buffer file stays behind"

        cluster.start()
        # Another process (the surviving worker or the replacement) drains the dead worker's file.
        wait_until(lambda: totals(url)[0] >= len(answers), 30, "the buffered deltas to be replayed", interval=0.2)
        wait_until(lambda: not victim_file.exists(), 10, "the dead worker's file to be consumed")
    finally:
        gateway.stop()
        mock.stop()
        if not cluster.running:
            cluster.start()
    expected = (len(answers), sum(a.output_tokens for a in answers))
    assert totals(url)[:2] == expected
    leftovers = [p.name for p in buffer_files(buffer_dir) if not p.name.endswith(".buf") or buffered_deltas(p)]
    assert leftovers == [] and not (buffer_dir / "quarantine").exists()
    # Replaying by hand afterwards counts nothing twice.
    out = manage(url, "drain_usage_buffer", "--dir", str(buffer_dir))
    assert out.startswith("Replayed 0 deltas"), out
    assert totals(url)[:2] == expected


# --- 3. SIGTERM under load, exactly ----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_under_load_records_exactly_the_requests_that_got_an_answer(cluster, tmp_path):
    url, key, mock, mock_url = make_world(cluster, tmp_path, "--delay-ms", "100", "--stream-chunk-delay-ms", "20")
    gateway, base_url = start_gateway(url, tmp_path, workers=1)

    async def load():
        async with new_session() as session:
            first = [asyncio.create_task(chat(session, base_url, key, i, stream=bool(i % 2),
                                              prompt=stream_prompt(i) if i % 2 else f"plain {i}"))
                     for i in range(60)]
            deadline = time.monotonic() + 20
            while not any(t.done() and t.result().whole for t in first):
                assert time.monotonic() < deadline, "no answer came back"
                await asyncio.sleep(0.01)
            os.kill(gateway.proc.pid, signal.SIGTERM)
            signalled = time.monotonic()
            # More requests while the gateway stops: refused at connect, or served whole.
            late = []
            for i in range(60, 80):
                late.append(asyncio.create_task(chat(session, base_url, key, i, stream=bool(i % 2),
                                                     prompt=stream_prompt(i) if i % 2 else f"plain {i}")))
                await asyncio.sleep(0.01)
            return await asyncio.wait_for(asyncio.gather(*first, *late), 60), signalled

    try:
        wait_for_workers(gateway, 1)
        answers, signalled = asyncio.run(load())
        exit_code = gateway.stop()
        upstream_seen = forwarded(mock_url)
    finally:
        gateway.stop()
        mock.stop()
    assert exit_code == 0
    answered = [a for a in answers if a.status is not None]
    # Every response the gateway began is a whole 200: a graceful stop cuts no stream.
    assert all(a.status == 200 and a.whole for a in answered), \
        [(a.index, a.status, a.whole, a.error) for a in answered if not a.whole]
    # The requests in flight at the signal (all 60 were sent before it) finished.
    in_flight = [a for a in answers if a.index < 60]
    assert all(a.sent < signalled for a in in_flight)
    assert all(a.status == 200 and a.whole for a in in_flight), \
        [(a.index, a.status, a.error_type, a.error) for a in in_flight if not a.whole]
    # Exactly. Compared: the requests that got any HTTP response from the gateway (a status line;
    # each of them, above, a 200 with a whole body), the requests in the ledger, and the requests the
    # mock upstream received. No more in the ledger (nothing counted that got no answer), no fewer
    # (every answer counted), and nothing forwarded that went unanswered.
    requests, output_tokens, _ = totals(url)
    assert requests == len(answered) == upstream_seen
    assert output_tokens == sum(a.output_tokens for a in answered)


# --- 4. budgets across workers ------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_a_budget_holds_across_workers_within_the_cache_bound_and_refuses_from_the_cache_in_an_outage(
        cluster, tmp_path):
    # $40 and $80 per million tokens: a request costs about a tenth of a cent, the cap is 7 cents.
    url, key, mock, mock_url = make_world(cluster, tmp_path, "--delay-ms", "50",
                                          input_price_micros=40_000_000, output_price_micros=80_000_000)
    manage(url, "set_budget", "dave", "--usd", "0.07", "--period", "daily")
    cap = 70_000_000  # nanodollars
    cache_seconds, in_flight = 1.0, 50
    refresh_slack = 0.5  # a refresh's own read time and event-loop lag, on top of GATEWAY_CACHE_SECONDS
    gateway, base_url = start_gateway(url, tmp_path, workers=2, env={"GATEWAY_CACHE_SECONDS": "1"})
    try:
        wait_for_workers(gateway, 2)

        async def rounds():
            answers = []
            async with new_session() as session:
                for number in range(40):  # rounds of 50 in flight, until a whole round is refused (the
                    # cap falls in the second or third; on a loaded machine every process may take a refresh
                    # period or more to see it, so the rounds are not counted short)
                    batch = await asyncio.wait_for(asyncio.gather(*[
                        chat(session, base_url, key, number * in_flight + i, stream=False, prompt="hi " * (i % 5 + 1))
                        for i in range(in_flight)]), 60)
                    answers += batch
                    if all(a.status == 429 for a in batch):
                        break
            return answers

        answers = asyncio.run(rounds())
        served = [a for a in answers if a.status == 200]
        refused = [a for a in answers if a.status == 429]
        assert len(served) + len(refused) == len(answers), {a.status for a in answers}
        assert all(a.whole and a.cost_nanos for a in served) and refused
        assert all(b"budget_exceeded" in a.body for a in refused)
        assert all(a.status == 429 for a in answers[-in_flight:]), "the last round is refused whole"

        requests, _, spend = totals(url)
        assert requests == len(served) and spend == sum(a.cost_nanos for a in served)
        # Refusing means some process saw the cap reached, and a process never sees more than was
        # spent: no refusal before the cap.
        assert spend >= cap
        # The bound. Let P be the process that admitted the last request, at t >= the last send time T
        # of any served request. P saw less than the cap at t, and P sees all but (a) its own requests
        # in flight at t, which were answered after T, and (b) what other processes recorded since
        # P's last refresh began, at most GATEWAY_CACHE_SECONDS (+ slack) before t: answered after
        # T - cache_seconds - slack. So the overshoot is at most (a + b) x the largest request cost.
        last_send = max(a.sent for a in served)
        largest = max(a.cost_nanos for a in served)
        terms = {}
        for process in {a.process for a in served}:
            own = sum(1 for a in served if a.process == process and a.headers_at >= last_send)
            others = sum(1 for a in served if a.process != process
                         and a.headers_at >= last_send - cache_seconds - refresh_slack)
            terms[process] = (own, others)
        assert all(own <= in_flight for own, _ in terms.values())
        bound = max(own + others for own, others in terms.values()) * largest
        assert spend - cap <= bound, (spend - cap, terms, largest)

        # The database goes away: budgets keep refusing from each process's last snapshot. A process
        # that took none of the last round may not have refreshed since the other's last commits: let
        # every process finish a refresh that began after them (each begins within a period plus a
        # read of the last), so each one's last snapshot holds the whole spend.
        time.sleep(2 * (cache_seconds + refresh_slack))
        cluster.stop("fast")
        time.sleep(cache_seconds + 0.5)  # a refresh failed meanwhile, and kept the snapshot

        async def during_outage():
            async with new_session() as session:
                tasks = []
                for i in range(20):
                    tasks.append(asyncio.create_task(chat(session, base_url, key, 1000 + i, stream=bool(i % 2),
                                                          prompt="hi", timeout=15)))
                    await asyncio.sleep(0.02)
                return await asyncio.wait_for(asyncio.gather(*tasks), 30)

        outage = asyncio.run(during_outage())
        assert [a.status for a in outage] == [429] * 20, [(a.status, a.body[:200]) for a in outage]
        assert all(b"budget_exceeded" in a.body for a in outage)
        cluster.start()
        assert forwarded(mock_url) == requests  # a refused request never reaches the upstream
    finally:
        gateway.stop()
        mock.stop()
    assert totals(url) == (requests, sum(a.output_tokens for a in served), spend)


# --- 5. API keys over time ----------------------------------------------------------------------------


def insert_key(url: str, raw: str, expires_in_seconds: float | None = None) -> float | None:
    """An ApiKey row for `raw`, straight into the database; its expiry as a Unix time."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        user_id = conn.execute("SELECT id FROM auth_user WHERE username = 'dave'").fetchone()[0]
        expires = conn.execute(
            "INSERT INTO gateway_apikey (user_id, name, prefix, digest, created_at, expires_at) "
            "VALUES (%s, 'test', %s, %s, now(), now() + %s * interval '1 second') "
            "RETURNING extract(epoch FROM expires_at)",
            (user_id, raw[:VISIBLE_PREFIX_LENGTH], hash_key(raw), expires_in_seconds)).fetchone()[0]
    return float(expires) if expires is not None else None


def new_raw_key() -> str:
    import secrets

    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass
class Poll:
    sent: float
    answered: float
    status: int


def poll(base_url: str, key: str, until: float, *, clock=time.monotonic, every: float = 0.03,
         stop_on: int | None = None) -> list[Poll]:
    polls = []
    while clock() < until:
        sent = clock()
        status = models_status(base_url, key)
        polls.append(Poll(sent, clock(), status))
        if status == stop_on:
            break
        time.sleep(every)
    return polls


@pytest.mark.timeout(120)
def test_revoked_and_expired_keys_are_refused_in_time_by_every_worker(cluster, tmp_path):
    url, key, mock, _ = make_world(cluster, tmp_path)
    cache_seconds, margin = 1.0, 0.75
    gateway, base_url = start_gateway(url, tmp_path, workers=2, env={"GATEWAY_CACHE_SECONDS": "1"})
    try:
        wait_for_workers(gateway, 2)
        assert [models_status(base_url, key) for _ in range(6)] == [200] * 6

        # Revocation: no forced refresh, only the background one.
        with psycopg.connect(url, autocommit=True) as conn:
            before = time.monotonic()
            conn.execute("UPDATE gateway_apikey SET revoked_at = now() WHERE digest = %s", (hash_key(key),))
            revoked = time.monotonic()
        polls = poll(base_url, key, revoked + cache_seconds + margin + 1.0)
        first_refusal = next(p for p in polls if p.status == 401)
        assert first_refusal.answered - before <= cache_seconds + margin
        late = [round(p.sent - revoked, 3) for p in polls if p.status != 401 and p.sent >= revoked + cache_seconds + margin]
        assert late == [], f"still served {late} s after the revocation"
        assert {p.status for p in polls} <= {200, 401}

        # Expiry: a key that works until its expires_at, and never after (wall clock, as the database's).
        short = new_raw_key()
        expires = insert_key(url, short, expires_in_seconds=2.5)
        polls = poll(base_url, short, expires + 1.0, clock=time.time)
        before_expiry = [p.status for p in polls if p.answered < expires]
        after_expiry = [p.status for p in polls if p.sent >= expires]
        assert before_expiry and set(before_expiry) == {200}, before_expiry
        assert after_expiry and set(after_expiry) == {401}, after_expiry
    finally:
        gateway.stop()
        mock.stop()


def key_lookups(cluster, offset: int = 0, digest: str | None = None) -> int:
    """Key look-ups by digest the server ran (its log, with log_statement = 'all') after `offset`."""
    with open(cluster.log, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    needle = f'"gateway_apikey"."digest" = \'{digest}\'' if digest else '"gateway_apikey"."digest" = \''
    return sum(1 for line in text.splitlines() if "statement:" in line and needle in line)


@pytest.mark.timeout(120)
def test_unknown_keys_are_negative_cached_and_their_database_lookups_rate_limited(cluster, tmp_path):
    url, key, mock, _ = make_world(cluster, tmp_path)
    negative_seconds, rate = 3.0, 5
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("SELECT pg_reload_conf()")
    # Refreshes far apart: a refresh loads every key and forgets the negative cache, which would hide it.
    gateway, base_url = start_gateway(url, tmp_path, workers=1, env={
        "GATEWAY_CACHE_SECONDS": "120", "GATEWAY_NEGATIVE_CACHE_SECONDS": str(negative_seconds),
        "GATEWAY_KEY_LOOKUPS_PER_SECOND": str(rate)})
    try:
        wait_for_workers(gateway, 1)
        assert models_status(base_url, key) == 200
        # The look-up bucket starts empty when a worker starts and fills at `rate` a second: let it fill.
        time.sleep(1.0 + 1.0 / rate)

        # An unknown key is looked up once and remembered as unknown; the key is then created, and
        # stays refused until the negative entry expires.
        raw = new_raw_key()
        digest = hash_key(raw)
        sent = time.monotonic()
        assert models_status(base_url, raw) == 401
        answered = time.monotonic()
        wait_until(lambda: key_lookups(cluster, digest=digest) == 1, 5, "the first look-up in the server log")
        insert_key(url, raw)
        polls = poll(base_url, raw, answered + negative_seconds + 3.0, every=0.1, stop_on=200)
        cached = [p for p in polls if p.status == 401]
        assert cached and polls[-1].status == 200, [(round(p.sent - sent, 2), p.status) for p in polls]
        # Refused only while the negative entry (set during the first request) could still be alive...
        assert all(p.sent < answered + negative_seconds for p in cached)
        # ...served only once it had expired, and promptly then.
        assert polls[-1].answered > sent + negative_seconds
        assert polls[-1].sent <= answered + negative_seconds + 0.1 + 0.5
        # One look-up when it was unknown, one when the entry expired; none in between.
        wait_until(lambda: key_lookups(cluster, digest=digest) >= 2, 5, "the look-ups in the server log")
        assert key_lookups(cluster, digest=digest) == 2

        # Random keys: at most GATEWAY_KEY_LOOKUPS_PER_SECOND look-ups a second, after a burst of as
        # many (the token bucket is full: nothing was looked up for a while).
        time.sleep(1.0)
        offset = cluster.log.stat().st_size

        async def burst():
            async with new_session() as session:
                async def one():
                    async with session.get(f"{base_url}/v1/models",
                                           headers={"authorization": f"Bearer {new_raw_key()}"},
                                           timeout=aiohttp.ClientTimeout(total=10)) as response:
                        await response.read()
                        return response.status

                tasks = []
                first = time.monotonic()
                for _ in range(20):  # 200 keys in 2 s
                    tasks += [asyncio.create_task(one()) for _ in range(10)]
                    await asyncio.sleep(0.1)
                statuses = await asyncio.wait_for(asyncio.gather(*tasks), 30)
                return statuses, first, time.monotonic()

        statuses, first, last = asyncio.run(burst())
        assert statuses == [401] * 200
        # Each backend writes a statement's line as it receives it, before the gateway has its answer:
        # a mark logged now, and seen in the log, says the log is written up to here.
        mark = f"codevector-log-mark-{os.getpid()}-{time.monotonic_ns()}"
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(f"SELECT '{mark}'")
        wait_until(lambda: mark in cluster.log.read_text(errors="replace"), 5, "the mark in the server log")
        lookups = key_lookups(cluster, offset)
        elapsed = last - first
        assert rate < lookups <= rate + rate * elapsed, (lookups, elapsed)
    finally:
        gateway.stop()
        mock.stop()
