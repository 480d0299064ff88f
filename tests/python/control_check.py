"""Remote control of a Sprout worker from Celery's own Python API (`app.control`).

    python control_check.py --broker redis://… --queue Q --worker NAME

Against a running `sprout worker -n NAME -Q Q` whose task directory has a long-running
`hog` and `add`: checks ping, registered, a running hog in `inspect().active()`,
`query_task`, `app.control.revoke(id, terminate=True)` (the hog ends REVOKED within 2 s
while 100 `add` jobs on the same worker all succeed), `pool_grow(10)` seen in
`inspect().stats()`, `revoked()`, and `rate_limit` / `time_limit` / `enable_events`
replies. Prints `control_check: N passed` and exits 0, or raises.
"""

import argparse
import time

from celery import Celery

parser = argparse.ArgumentParser()
parser.add_argument("--broker", required=True)
parser.add_argument("--queue", required=True)
parser.add_argument("--worker", required=True)
args = parser.parse_args()

app = Celery("control_check", broker=args.broker, backend=args.broker)
app.conf.task_default_queue = args.queue
dest = [args.worker]
passed = 0


def check(what, cond, detail=""):
    global passed
    if not cond:
        raise SystemExit(f"FAILED: {what}: {detail}")
    passed += 1
    print(f"ok: {what}")


insp = app.control.inspect(destination=dest, timeout=2)

# ping: retried while the worker starts
deadline = time.time() + 30
pong = None
while time.time() < deadline:
    pong = app.control.ping(destination=dest, timeout=1)
    if pong:
        break
check("ping", pong == [{args.worker: {"ok": "pong"}}], pong)

registered = insp.registered()
check("registered", "hog" in registered[args.worker] and "add" in registered[args.worker], registered)

hog = app.send_task("hog", args=[], queue=args.queue)
active = []
deadline = time.time() + 10
while time.time() < deadline:
    active = (insp.active() or {}).get(args.worker, [])
    if any(a["id"] == hog.id for a in active):
        break
    time.sleep(0.05)
entry = [a for a in active if a["id"] == hog.id]
check("active lists the hog", entry and entry[0]["name"] == "hog" and entry[0]["time_start"], active)

query = insp.query_task(hog.id)
check("query_task", query[args.worker][hog.id][0] == "active", query)

shorts = [app.send_task("add", args=[i, i], queue=args.queue) for i in range(100)]
t0 = time.time()
replies = app.control.revoke(hog.id, terminate=True, signal="SIGTERM", destination=dest, reply=True, timeout=2)
check("revoke terminate reply", replies == [{args.worker: {"ok": f"terminate: {hog.id}"}}], replies)
state = None
while time.time() - t0 < 2:
    state = hog.state
    if state == "REVOKED":
        break
    time.sleep(0.02)
check("hog REVOKED within 2 s", state == "REVOKED", f"{state} after {time.time() - t0:.2f}s")
results = [r.get(timeout=30) for r in shorts]
check("100 short jobs succeed", results == [2 * i for i in range(100)], results[:5])

revoked = insp.revoked()
check("revoked lists the hog", hog.id in revoked[args.worker], revoked)

before = insp.stats()[args.worker]["pool"]["max-concurrency"]
grown = app.control.pool_grow(10, destination=dest, reply=True, timeout=2)
check("pool_grow reply", grown == [{args.worker: {"ok": "pool will grow"}}], grown)
after = insp.stats()[args.worker]["pool"]["max-concurrency"]
check("pool_grow in stats", after == before + 10, (before, after))
shrunk = app.control.pool_shrink(10, destination=dest, reply=True, timeout=2)
check("pool_shrink reply", shrunk == [{args.worker: {"ok": "pool will shrink"}}], shrunk)

rl = app.control.rate_limit("add", "100/s", destination=dest, reply=True, timeout=2)
check("rate_limit", rl == [{args.worker: {"ok": "new rate limit set successfully"}}], rl)
tl = app.control.time_limit("add", soft=5, hard=10, destination=dest, reply=True, timeout=2)
check("time_limit", tl == [{args.worker: {"ok": "time limits set successfully"}}], tl)
ev = app.control.enable_events(destination=dest, reply=True, timeout=2)
check("enable_events", ev == [{args.worker: {"ok": "task events enabled"}}], ev)
aq = insp.active_queues()
check("active_queues", [q["name"] for q in aq[args.worker]] == [args.queue], aq)
added = app.control.add_consumer("extra-" + args.queue, destination=dest, reply=True, timeout=2)
check("add_consumer", added == [{args.worker: {"ok": f"add consumer extra-{args.queue}"}}], added)
unknown = app.control.broadcast("no_such_command", destination=dest, reply=True, timeout=2)
check("unknown command", "error" in unknown[0][args.worker], unknown)

print(f"control_check: {passed} passed")
