#!/usr/bin/env python3
"""Drain rate of trivial Celery tasks on Redis: Sprout's worker beside Python Celery's.

    host/benches/celery_compare.sh [--jobs N] [--celery-jobs M] [--workers sprout,solo,prefork,gevent]
                                   [--python]

(`celery_compare.sh` makes the virtualenv, with gevent, and runs this file in it.)

For each worker kind, in one run on this machine:

1. a fresh queue is filled with N `add(2, 3)` messages by the real Python Celery client
   (`app.send_task`, the way producers send them), and the send rate is reported;
2. the worker starts on the filled queue;
3. the drain time runs from the first message taken (the queue shrinks) to the last
   result stored (Celery: N result keys exist in the result database; Sprout:
   `--max-jobs N` exits once N results are stored).

With `--python`, the Sprout worker runs the Python task file `py.add` (tasks/python/add.py,
built by `sprout build` into target/tasks/python) instead of the Rust `add`: the same
Python function Celery's workers run, `a + b`.

Needs Redis at 127.0.0.1:6379; uses databases 13 (broker) and 14 (Celery results) and
flushes both before each worker kind. Sprout stores results in its broker database.
"""
import argparse
import os
import subprocess
import sys
import time
import uuid

import redis
from celery import Celery

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
BROKER_DB, RESULT_DB = 13, 14
BROKER = f"redis://127.0.0.1:6379/{BROKER_DB}"
RESULTS = f"redis://127.0.0.1:6379/{RESULT_DB}"


def fill(queue: str, jobs: int, task: str = "add") -> float:
    """Sends `jobs` `task`(2, 3) messages with the Python client; returns sends per second."""
    # No result backend: a fire-and-forget producer. (With one, the client subscribes to
    # every task's result channel, which costs the producer, not the worker.)
    app = Celery("bench_producer", broker=BROKER)
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(jobs):
            app.send_task(task, (2, 3), queue=queue, producer=producer)
    return jobs / (time.perf_counter() - started)


def wait_first_taken(r: redis.Redis, queue: str, jobs: int, proc) -> float:
    while r.llen(queue) >= jobs:
        if proc.poll() is not None:
            sys.exit(f"worker exited early with {proc.returncode}")
        time.sleep(0.002)
    return time.perf_counter()


def celery_worker(pool: str, queue: str, jobs: int):
    args = ["-P", pool]
    if pool == "prefork":
        args += ["-c", str(os.cpu_count() or 2)]
    elif pool == "gevent":
        args += ["-c", "100"]
    env = dict(
        os.environ,
        SPROUT_TEST_BROKER=BROKER,
        SPROUT_TEST_RESULTS=RESULTS,
        SPROUT_TEST_QUEUE=queue,
        PYTHONPATH=os.path.join(REPO, "tests", "python"),
    )
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", *args,
        "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-l", "warning",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain_celery(pool: str, jobs: int) -> tuple[float, float]:
    r = redis.Redis(db=BROKER_DB)
    results = redis.Redis(db=RESULT_DB)
    queue = f"bench-{pool}-{uuid.uuid4().hex[:8]}"
    send_rate = fill(queue, jobs)
    proc = celery_worker(pool, queue, jobs)
    try:
        first = wait_first_taken(r, queue, jobs, proc)
        while results.dbsize() < jobs:
            if proc.poll() is not None:
                sys.exit(f"celery worker exited early with {proc.returncode}")
            time.sleep(0.01)
        done = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait()
    return send_rate, jobs / (done - first)


def drain_sprout(jobs: int, concurrency: int, python: bool) -> tuple[float, float]:
    r = redis.Redis(db=BROKER_DB)
    queue = f"bench-sprout-{uuid.uuid4().hex[:8]}"
    send_rate = fill(queue, jobs, "py.add" if python else "add")
    binary = os.environ.get("SPROUT_BIN", os.path.join(REPO, "target", "release", "sprout"))
    tasks = os.environ.get("TASKS_DIR", os.path.join(REPO, "target", "tasks"))
    if python:
        tasks = os.environ.get("PY_TASKS_DIR", os.path.join(tasks, "python"))
    env = dict(os.environ, SPROUT_LOG="warn")
    if not python:
        env["SPROUT_CACHE_DIR"] = os.path.join(REPO, "target", "bench-cache")
    # else: the cache `sprout build` filled (SPROUT_CACHE_DIR or ~/.cache/sprout), so the
    # worker loads the 18 MB Python files without compiling them.
    cmd = [binary, "worker", "--broker", BROKER, "--tasks", tasks, "-Q", queue,
           "-c", str(concurrency), "--max-jobs", str(jobs)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = wait_first_taken(r, queue, jobs, proc)
    if proc.wait() != 0:
        sys.exit(f"sprout worker exited with {proc.returncode}")
    done = time.perf_counter()
    stored = sum(1 for _ in r.scan_iter("celery-task-meta-*", count=10000))
    if stored < jobs:
        sys.exit(f"sprout worker exited with only {stored} of {jobs} results stored")
    return send_rate, jobs / (done - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30000, help="jobs for the Sprout worker")
    parser.add_argument("--celery-jobs", type=int, default=5000, help="jobs per Celery pool")
    parser.add_argument("--concurrency", type=int, default=200, help="Sprout's -c")
    parser.add_argument("--workers", default="sprout,solo,prefork,gevent")
    parser.add_argument("--python", action="store_true",
                        help="Sprout runs the Python task file py.add instead of the Rust add")
    opts = parser.parse_args()

    rows = []
    for kind in opts.workers.split(","):
        for db in (BROKER_DB, RESULT_DB):
            redis.Redis(db=db).flushdb()
        if kind == "sprout":
            send, drain = drain_sprout(opts.jobs, opts.concurrency, opts.python)
            what = "py.add (Python task file)" if opts.python else "add (Rust)"
            label, jobs = f"sprout worker -c {opts.concurrency}, {what}", opts.jobs
        else:
            send, drain = drain_celery(kind, opts.celery_jobs)
            label, jobs = f"celery worker -P {kind}", opts.celery_jobs
        rows.append((label, jobs, send, drain))
        print(f"{label:<44} {jobs:>7} jobs  python send {send:>7.0f}/s  drain {drain:>8.0f} jobs/s",
              flush=True)
    for db in (BROKER_DB, RESULT_DB):
        redis.Redis(db=db).flushdb()

    best_celery = max((d for label, _, _, d in rows if label.startswith("celery")), default=None)
    sprout = [d for label, _, _, d in rows if label.startswith("sprout")]
    if best_celery and sprout:
        print(f"sprout / best celery pool: {sprout[0] / best_celery:.1f}x")


if __name__ == "__main__":
    main()
