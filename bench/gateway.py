"""Gateway overhead and throughput against a bare aiohttp forwarder and the mock upstream.

Starts, on this machine: two mock upstreams (0 ms and 50 ms), the gateway (gunicorn, one uvicorn
worker, PostgreSQL database codevector_bench_gateway) and bench/forwarder.py; drives them with wrk
and prints: p50/p99 at 1 in flight (direct, forwarder, gateway), throughput at 16 in flight (0 ms
upstream) and at 200 in flight (50 ms upstream), stream time-to-first-byte, and the requests
recorded in the ledger against the requests the gateway answered, and how this disk's flushes
behaved meanwhile (a probe beside the bench: 8 KiB written and fdatasync'ed every 20 ms; with
synchronous commit each batch waits for one such flush of PostgreSQL's WAL, so a flush stalled
by the disk stalls every request in flight), and the share of the CPU this VM's hypervisor took
for other guests during each forwarder and gateway run (steal), and the CPU each serving process
(forwarder, gateway worker, reference) spent per request. With --budget, a second gateway
(database codevector_bench_gateway_budget, a daily budget on the bench user) takes its turn beside
the first in every round, and budgets on are printed against budgets off, round by round.

With --reference, bench/forwarder_ledger.py (the forwarder with a group-committed UPSERT before each
answer: what recording costs at its simplest) takes its turn too, and the gateway is printed against it.

Run: .venv/bin/python bench/gateway.py [--seconds 6] [--rounds 3] [--budget] [--async-commit] [--quick] [--reference]
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")

from tests.support.servers import free_port  # noqa: E402
from tests.support.servers import Process, manage, wait_for_port  # noqa: E402

SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432").rstrip("/")
DB = "codevector_bench_gateway"
URL = f"{SERVER}/{DB}"
BUDGET_URL = f"{SERVER}/{DB}_budget"  # --budget: the second gateway's database
REFERENCE_URL = f"{SERVER}/{DB}_reference"  # --reference: bench/forwarder_ledger.py's database
BODY = json.dumps({"model": "MODEL", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]})


def wrk(url: str, connections: int, seconds: int, model: str, key: str | None, workdir: Path,
        pid: int | None = None) -> dict:
    """One wrk run; with `pid`, also the CPU that process spent per request (µs), from /proc."""
    script = workdir / f"wrk-{model}.lua"
    headers = 'wrk.headers["content-type"] = "application/json"\n'
    if key:
        headers += f'wrk.headers["authorization"] = "Bearer {key}"\n'
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY.replace("MODEL", model))}\n{headers}')
    start, stolen, cpu = time.monotonic(), cpu_stolen(), process_cpu(pid)
    out = subprocess.run(["wrk", "-t", "1" if connections == 1 else "2", "-c", str(connections), "-d", f"{seconds}s",
                          "--latency", "-s", str(script), url + "/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    cpu = process_cpu(pid) - cpu

    def ms(label):
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"p50": ms("50%"), "p99": ms("99%"), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": requests,
            "errors": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else "",
            "start": start, "end": time.monotonic(), "steal": cpu_stolen(stolen),
            "cpu_us": cpu / max(1, requests) * 1e6 if pid else None}


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (/proc), 0 without one. The steadiest figure of
    a run: a spell in which this VM is slow stretches time, not the CPU a request needs."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_pid(process: Process) -> int:
    """The process that serves: gunicorn's one worker, else the process itself (uvicorn)."""
    children = subprocess.run(["pgrep", "-P", str(process.proc.pid)], capture_output=True, text=True).stdout.split()
    return int(children[0]) if children else process.proc.pid


def cpu_stolen(since: tuple[int, int] | None = None):
    """This VM's CPU time taken by its hypervisor for other guests ("steal" in /proc/stat): the
    (stolen, total) ticks now, or the share stolen since `since`. Every process here runs slower
    by about as much while it lasts, and a run that meets more of it than the one it is compared
    with moves the ratio."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]
    except OSError:
        return 0.0 if since else (0, 0)
    now = (ticks[7], sum(ticks))
    if since is None:
        return now
    return (now[0] - since[0]) / max(1, now[1] - since[1])


class DiskProbe(threading.Thread):
    """Times an 8 KiB write + fdatasync every `every` seconds in `directory` (here on the device
    PostgreSQL's WAL lives on) and keeps (start, seconds) of each, to tell a run that met a disk
    stall from one that did not."""

    def __init__(self, directory: Path, every: float = 0.02):
        super().__init__(daemon=True)
        self.path, self.every = directory / "disk-probe", every
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.write(fd, bytes(8192 * 64))
            os.fsync(fd)
            block, turn = os.urandom(8192), 0
            while not self.stopped.wait(self.every):
                os.pwrite(fd, block, (turn % 64) * 8192)
                turn += 1
                start = time.monotonic()
                os.fdatasync(fd)
                self.samples.append((start, time.monotonic() - start))
        finally:
            os.close(fd)
            self.path.unlink(missing_ok=True)

    def stalls(self, start: float, end: float, over: float = 0.02) -> list[float]:
        """The flushes longer than `over` seconds that overlapped [start, end], in ms."""
        return [s * 1000 for t, s in list(self.samples) if s > over and t < end and t + s > start]

    def summary(self) -> str:
        flushes = sorted(s * 1000 for _, s in self.samples)
        if not flushes:
            return "no flushes timed"
        over = [f for f in flushes if f > 20]
        return (f"{len(flushes)} flushes, p50 {flushes[len(flushes) // 2]:.2f} ms, "
                f"p99 {flushes[int(len(flushes) * 0.99)]:.2f} ms; {len(over)} over 20 ms"
                + (f" (longest {over[-1]:.0f} ms)" if over else ""))


async def stream_ttfb(targets: list[tuple[str, str | None]], count: int = 200) -> list[float]:
    """Median time to the first streamed byte for each (url, key), the targets taking turns."""
    import aiohttp

    body = json.loads(BODY.replace("MODEL", "gpt-bench"))
    body["stream"] = True
    samples: list[list[float]] = [[] for _ in targets]
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            for (url, key), mine in zip(targets, samples):
                headers = {"authorization": f"Bearer {key}"} if key else {}
                started = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                    await response.content.readany()
                    mine.append(time.perf_counter() - started)
                    await response.read()
    return [statistics.median(mine) * 1000 for mine in samples]


async def counted_run(url: str, key: str, count: int = 2000, in_flight: int = 32) -> int:
    import aiohttp

    body = json.loads(BODY.replace("MODEL", "gpt-bench"))
    ok = 0
    semaphore = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession() as session:
        async def one():
            nonlocal ok
            async with semaphore:
                async with session.post(url + "/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"}) as response:
                    await response.read()
                    ok += response.status == 200
        await asyncio.gather(*(one() for _ in range(count)))
    return ok


async def open_streams(url: str, key: str, count: int = 1000) -> tuple[int, float]:
    """Open `count` slow streams at once through one gateway worker; (completed, seconds)."""
    import aiohttp

    body = json.loads(BODY.replace("MODEL", "gpt-bench-streams"))
    body["stream"] = True
    completed = 0
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=count + 100)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one():
            nonlocal completed
            async with session.post(url + "/v1/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {key}"}) as response:
                data = await response.read()
                completed += response.status == 200 and data.rstrip().endswith(b"data: [DONE]")
        await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    return completed, time.perf_counter() - started


def profiled(path: str | None, gunicorn: Process, seconds: int, run):
    """`run()`, sampled by py-spy (the gunicorn worker, not its master) when a path is given."""
    if not path:
        return run()
    worker = str(serving_pid(gunicorn))
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "-r", "200",
                            "-d", str(seconds), "-o", path, "-p", worker], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        return run()
    finally:
        spy.wait(seconds + 30)


def ledger_requests(url: str = URL) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT coalesce(sum(requests), 0) FROM usage_bucket_5min").fetchone()[0]


def prepare(url: str, ports: dict[str, int], budget: bool) -> str:
    """A fresh database at `url` with the bench user, the three facades and an API key (returned);
    with `budget`, a daily budget on the user (large: it never refuses, every request is checked)."""
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    manage(url, "migrate", "-v0")
    manage(url, "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('bench')")
    for model, port in ports.items():
        manage(url, "create_facade", model, "--provider", "openai", "--base-url", f"http://127.0.0.1:{port}/v1",
               "--upstream-model", "gpt-bench", "--input-price", "0.15", "--output-price", "0.6")
    if budget:
        manage(url, "set_budget", "bench", "--usd", "1000000", "--period", "daily", "--warn-percent", "90")
    return manage(url, "create_api_key", "bench").strip().splitlines()[-1]


def gunicorn(url: str, port: int, env: dict, log: Path) -> Process:
    return Process([sys.executable, "-m", "gunicorn", "codevector.asgi:application", "-k", "uvicorn_worker.UvicornWorker",
                    "--bind", f"127.0.0.1:{port}", "--workers", "1", "--backlog", "4096"],
                   {**env, "DATABASE_URL": url}, log)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the figures are their medians)")
    parser.add_argument("--budget", action="store_true",
                        help="also run a second gateway whose database puts a (large) daily budget on the bench user, "
                             "taking turns with the first (budgets off), and print budgets on against off")
    parser.add_argument("--async-commit", action="store_true",
                        help="run the gateway with USAGE_SYNCHRONOUS_COMMIT=off (no WAL flush before each answer)")
    parser.add_argument("--quick", action="store_true", help="only the 1- and 16-in-flight rows and the ledger check")
    parser.add_argument("--reference", action="store_true",
                        help="also run bench/forwarder_ledger.py (the forwarder with a group-committed UPSERT before "
                             "each answer) in every round, and print the gateway against it")
    parser.add_argument("--profile", metavar="PATH", help="sample the gateway worker with py-spy during the first "
                        "16-in-flight run and write a flat profile (py-spy's raw format) to PATH")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cv-bench-"))
    mock_port, slow_port, stream_port, gw_port, fw_port, slow_fw_port, budget_port, ref_port, slow_ref_port = (
        free_port() for _ in range(9))
    facades = {"gpt-bench": mock_port, "gpt-bench-slow": slow_port, "gpt-bench-streams": stream_port}
    key = prepare(URL, facades, budget=False)
    budget_key = prepare(BUDGET_URL, facades, budget=True) if args.budget else None
    env = {**os.environ, "DATABASE_URL": URL, "USAGE_BUFFER_DIR": str(workdir / "buffer"), "LOG_LEVEL": "WARNING",
           "USAGE_SYNCHRONOUS_COMMIT": "false" if args.async_commit else "true"}
    def forwarder_at(port: int, upstream_port: int, app: str = "bench.forwarder:app", extra: dict | None = None,
                     log: str = "forwarder") -> Process:
        return Process([sys.executable, "-m", "uvicorn", app, "--port", str(port), "--loop", "uvloop", "--http",
                        "httptools", "--log-level", "warning", "--backlog", "4096"],
                       {**env, "UPSTREAM": f"http://127.0.0.1:{upstream_port}", **(extra or {})}, workdir / f"{log}.log")

    gateway_process = gunicorn(URL, gw_port, env, workdir / "gateway.log")
    forwarder_process = forwarder_at(fw_port, mock_port)
    slow_forwarder_process = forwarder_at(slow_fw_port, slow_port, log="forwarder-slow")
    processes = [
        Process([sys.executable, "manage.py", "mock_upstream", "--port", str(mock_port)], env, workdir / "mock.log"),
        Process([sys.executable, "manage.py", "mock_upstream", "--port", str(slow_port), "--delay-ms", "50"], env,
                workdir / "mock-slow.log"),
        Process([sys.executable, "manage.py", "mock_upstream", "--port", str(stream_port), "--stream-chunk-delay-ms",
                 "250"], env, workdir / "mock-streams.log"),
        gateway_process, forwarder_process, slow_forwarder_process,
    ]
    ports = [mock_port, slow_port, stream_port, gw_port, fw_port, slow_fw_port]
    if args.budget:
        # Its own buffer directory: two gateways never share one.
        budget_process = gunicorn(BUDGET_URL, budget_port, {**env, "USAGE_BUFFER_DIR": str(workdir / "buffer-budget")},
                                  workdir / "gateway-budget.log")
        processes.append(budget_process)
        ports.append(budget_port)
    reference_processes = []
    if args.reference:
        import psycopg

        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB}_reference WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB}_reference")
        reference_processes = [forwarder_at(port, upstream_port, "bench.forwarder_ledger:app",
                                            {"REFERENCE_DSN": REFERENCE_URL}, f"reference-{port}")
                               for port, upstream_port in ((ref_port, mock_port), (slow_ref_port, slow_port))]
        processes += reference_processes
        ports += [ref_port, slow_ref_port]
    try:
        for port in ports:
            wait_for_port(port)
        direct, forwarder, gateway = (f"http://127.0.0.1:{p}" for p in (mock_port, fw_port, gw_port))
        slow_direct, slow_forwarder = f"http://127.0.0.1:{slow_port}", f"http://127.0.0.1:{slow_fw_port}"
        gateways = {gateway: (key, URL)}
        who = ["direct", "forwarder", "gateway"]
        if args.budget:
            gateways[f"http://127.0.0.1:{budget_port}"] = (budget_key, BUDGET_URL)
            who.append("gateway, budgets on")
        references = []  # --reference: appended to each row, after the gateways
        if args.reference:
            references = [f"http://127.0.0.1:{ref_port}", f"http://127.0.0.1:{slow_ref_port}"]
            who.append("forwarder + ledger (reference)")
        for url, (gateway_key, _) in gateways.items():
            asyncio.run(counted_run(url, gateway_key, 200))  # warm up
        # The processes whose CPU per request each run reports (not the mocks': direct has none).
        serving = {forwarder: forwarder_process, slow_forwarder: slow_forwarder_process, gateway: gateway_process,
                   **dict(zip(references, reference_processes))}
        if args.budget:
            serving[f"http://127.0.0.1:{budget_port}"] = budget_process
        pids = {url: serving_pid(process) for url, process in serving.items()}
        probe = DiskProbe(workdir)
        probe.start()
        s = args.seconds
        targets = {"1 in flight": (1, "gpt-bench", [direct, forwarder, *gateways, *references[:1]]),
                   "16 in flight, 0 ms": (16, "gpt-bench", [direct, forwarder, *gateways, *references[:1]])}
        if not args.quick:
            targets["200 in flight, 50 ms"] = (200, "gpt-bench-slow",
                                               [slow_direct, slow_forwarder, *gateways, *references[1:]])
        # Rounds interleave direct, forwarder and gateway (and the budgets-on gateway), so that a slow
        # spell of this shared machine lands on all of them: each figure is the median of its rounds,
        # each ratio the median of the ratios of one round.
        rounds = {label: [] for label in targets}
        for number in range(args.rounds):
            for label, (connections, model, urls) in targets.items():
                results = []
                for index, url in enumerate(urls):
                    gateway_key = gateways[url][0] if url in gateways else None

                    def run(url=url, gateway_key=gateway_key, connections=connections, model=model):
                        return wrk(url, connections, s, model if gateway_key else "gpt-bench", gateway_key, workdir,
                                   pids.get(url))

                    profile = args.profile if (number, label, index) == (0, "16 in flight, 0 ms", 2) else None
                    results.append(profiled(profile, gateway_process, s, run))
                rounds[label].append(results)
        print(f"\nbench/gateway.py — {args.rounds} interleaved rounds of {s} s per run (medians), synchronous commit "
              f"{'off' if args.async_commit else 'on'}; cores: {os.cpu_count()}")
        print(f"{'':22} | " + " | ".join(f"{name:>36}" for name in ("direct to mock", "bare forwarder", *who[2:])))
        for label, results in rounds.items():
            medians = [{field: statistics.median(r[i][field] for r in results) for field in ("rps", "p50", "p99")}
                       for i in range(len(who))]
            cells = [f"{m['rps']:>7.0f} req/s p50 {m['p50']:6.2f} p99 {m['p99']:7.2f} ms" for m in medians]
            print(f"{label:22} | " + " | ".join(cells))
            for r in results:
                for name, one in zip(who, r):
                    if one["errors"] or one["socket_errors"]:
                        print(f"    {name}: {one['errors']} non-2xx, socket errors {one['socket_errors']}")
        one = rounds["1 in flight"]
        added = [r[2]["p50"] - r[1]["p50"] for r in one]
        print(f"added p50 at 1 in flight, gateway over forwarder: {statistics.median(added):.2f} ms "
              f"(rounds: {', '.join(f'{a:.2f}' for a in added)}; goal <= 1.0)")
        for label, goal in (("16 in flight, 0 ms", "goal >= 60%"), ("200 in flight, 50 ms", "goal >= 85%")):
            if label in rounds:
                ratios = [r[2]["rps"] / r[1]["rps"] for r in rounds[label]]
                print(f"gateway / forwarder throughput at {label}: {statistics.median(ratios):.0%} "
                      f"(rounds: {', '.join(f'{x:.0%}' for x in ratios)}; {goal})")
        if "200 in flight, 50 ms" in rounds:
            extra = [r[2]["p99"] - r[1]["p99"] for r in rounds["200 in flight, 50 ms"]]
            print(f"p99 at 200 in flight, gateway over forwarder: {statistics.median(extra):+.0f} ms "
                  f"(rounds: {', '.join(f'{x:+.0f}' for x in extra)}; goal <= +50)")
        if args.reference:
            # The gateway against the reference: what its own steps cost over recording alone.
            last = len(who) - 1
            added_ref = [r[last]["p50"] - r[1]["p50"] for r in one]
            print(f"reference (forwarder + ledger) at 1 in flight: added p50 {statistics.median(added_ref):.2f} ms over "
                  f"the forwarder (rounds: {', '.join(f'{a:.2f}' for a in added_ref)})")
            for label, results in rounds.items():
                of_forwarder = [r[last]["rps"] / r[1]["rps"] for r in results]
                gateway_of_reference = [r[2]["rps"] / r[last]["rps"] for r in results]
                print(f"reference / forwarder throughput at {label}: {statistics.median(of_forwarder):.0%} "
                      f"(rounds: {', '.join(f'{x:.0%}' for x in of_forwarder)}); gateway / reference: "
                      f"{statistics.median(gateway_of_reference):.0%} "
                      f"(rounds: {', '.join(f'{x:.0%}' for x in gateway_of_reference)})")
        if args.budget:
            # Budgets on against off, each round's pair: throughput within 10 %, and the added p50 at
            # 1 in flight (over the forwarder) within 10 % of the budgets-off gateway's.
            for label, results in rounds.items():
                ratios = [r[3]["rps"] / r[2]["rps"] for r in results]
                print(f"budgets on / off, throughput at {label}: {statistics.median(ratios):.0%} "
                      f"(rounds: {', '.join(f'{x:.0%}' for x in ratios)}; goal >= 90%)")
            added_on = [r[3]["p50"] - r[1]["p50"] for r in one]
            print(f"added p50 at 1 in flight, budgets on: {statistics.median(added_on):.2f} ms against "
                  f"{statistics.median(added):.2f} ms off (rounds: {', '.join(f'{a:.2f}' for a in added_on)})")
        for label, results in rounds.items():
            # CPU per request of each serving process, median of the rounds: what a request costs
            # the worker, whatever the VM's speed in that spell (the ratios above move with it).
            cells = [f"{name} {statistics.median(r[i]['cpu_us'] for r in results):.0f}"
                     for i, name in enumerate(who) if results[0][i]["cpu_us"] is not None]
            print(f"CPU per request (µs, one process each) at {label}: {', '.join(cells)}")
        probe.stopped.set()
        probe.join()
        print(f"disk flushes during the runs (8 KiB + fdatasync every 20 ms beside the bench): {probe.summary()}")
        for label, results in rounds.items():
            # A stall during a gateway run holds every request in flight for its length; the
            # direct and forwarder runs never wait for the disk.
            cells = []
            for r in results:
                stalls = [max(probe.stalls(one["start"], one["end"]), default=0) for one in r[2:2 + len(gateways)]]
                cells.append("/".join(f"{x:.0f}" for x in stalls))
            print(f"  longest stall (ms) in each round's gateway run{'s (off/on)' if args.budget else ''} at "
                  f"{label}: {', '.join(cells)}")
            # The same goal over the rounds whose gateway run met no stall: what the code does on a
            # disk that flushes in time. Shown beside the goal's figure above, never instead of it.
            calm = [r for r in results if not probe.stalls(r[2]["start"], r[2]["end"])]
            if label == "1 in flight":
                figures = [f"+{r[2]['p50'] - r[1]['p50']:.2f} ms" for r in calm]
            else:
                figures = [f"{r[2]['rps'] / r[1]['rps']:.0%}" + (f" p99 {r[2]['p99'] - r[1]['p99']:+.0f} ms"
                                                                 if label.startswith("200") else "") for r in calm]
            print(f"    rounds without a stall in the gateway's run: {len(calm)} of {len(results)}"
                  + (f" ({', '.join(figures)})" if figures else ""))
            print(f"  CPU stolen by the hypervisor (%) in each round's forwarder/gateway runs at {label}: "
                  + ", ".join("/".join(f"{one['steal']:.0%}".rstrip("%") for one in r[1:2 + len(gateways)]) for r in results))
        if not args.quick:
            ttfb = asyncio.run(stream_ttfb([(direct, None), (forwarder, None), (gateway, key)]))
            print(f"stream time to first byte (median, taking turns): direct {ttfb[0]:.2f} ms, forwarder "
                  f"{ttfb[1]:.2f} ms, gateway {ttfb[2]:.2f} ms (+{ttfb[2] - ttfb[1]:.2f} over the forwarder; "
                  "goal <= +0.5)")
            completed, seconds = asyncio.run(open_streams(gateway, key, 1000))
            print(f"1,000 concurrent streams (each about 2 s long) through one worker: {completed} completed "
                  f"in {seconds:.1f} s")
        time.sleep(1)  # requests still in flight when wrk stopped are recorded before the count starts
        for url, (gateway_key, database) in gateways.items():
            before = ledger_requests(database)
            answered = asyncio.run(counted_run(url, gateway_key, 2000))
            time.sleep(0.5)
            print(f"ledger check{' (budgets on)' if database == BUDGET_URL else ''}: the gateway answered {answered} "
                  f"requests with 200; the ledger recorded {ledger_requests(database) - before}")
    finally:
        for process in processes:
            process.stop()


if __name__ == "__main__":
    main()
