import os, sys, time, atexit, asyncio
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codevector.settings")
from codevector.asgi import application
from gateway import pipeline as P
from usage import ledger as L
acc = {}; n = [0]
def mark(call, name):
    d = getattr(call, "_t", None)
    if d is None: return
    d.append((name, time.perf_counter()))
orig_proxy = P.Pipeline.proxy
async def proxy(self, call, route, limit):
    call.extra_headers.append((b"x-t", b"1"))
    t = [("start", time.perf_counter())]
    object.__setattr__ if False else None
    TR[id(call)] = t
    try:
        await orig_proxy(self, call, route, limit)
    finally:
        t.append(("end", time.perf_counter()))
        TR.pop(id(call), None)
        for (a, ta), (b, tb) in zip(t, t[1:]):
            acc[f"{a}->{b}"] = acc.get(f"{a}->{b}", 0) + (tb - ta)
        n[0] += 1
        if n[0] % 20000 == 0:
            print({k: round(v / 20000 * 1e6) for k, v in acc.items()}, file=sys.stderr, flush=True); acc.clear()
TR = {}
P.Pipeline.proxy = proxy
orig_post = None
orig_record = P.Pipeline.record
async def record(self, call, usage, error=False):
    t = TR.get(id(call))
    if t is not None: t.append(("record", time.perf_counter()))
    await orig_record(self, call, usage, error)
    if t is not None: t.append(("recorded", time.perf_counter()))
P.Pipeline.record = record
orig_whole = P.Pipeline.whole_response
async def whole(self, call, response, body):
    t = TR.get(id(call))
    if t is not None: t.append(("upstream answered", time.perf_counter()))
    await orig_whole(self, call, response, body)
P.Pipeline.whole_response = whole
orig_auth = P.Pipeline.check_budgets
def cb(self, call):
    t = TR.get(id(call))
    if t is not None: t.append(("checked", time.perf_counter()))
    return orig_auth(self, call)
P.Pipeline.check_budgets = cb
bacc = {"n": 0, "write": 0.0, "size": 0, "send": 0.0, "rt": 0.0}
orig_write = L.PostgresWriter.write
async def pw_write(self, deltas, attempt=None):
    t0 = time.perf_counter()
    await orig_write(self, deltas, attempt)
    bacc["write"] += time.perf_counter() - t0; bacc["n"] += 1; bacc["size"] += len(deltas)
    if bacc["n"] % 3000 == 0:
        n = bacc["n"]; print(f"batches: mean size {bacc['size']/n:.1f}, write wall {bacc['write']/n*1e6:.0f} us, pgwire.run wall {bacc['rt']/n*1e6:.0f} us", file=sys.stderr, flush=True)
        bacc.update(n=0, write=0.0, size=0, rt=0.0)
L.PostgresWriter.write = pw_write
from usage import pgwire
orig_run = pgwire.run
async def run(conn, text):
    t0 = time.perf_counter()
    try:
        return await orig_run(conn, text)
    finally:
        bacc["rt"] += time.perf_counter() - t0
pgwire.run = run
L.pgwire.run = run
