#!/usr/bin/env python3
"""Drain rate of trivial Celery tasks on RabbitMQ: Sprout's worker beside Python Celery's.

    host/benches/amqp_compare.sh [--jobs N] [--celery-jobs M] [--workers sprout,solo,prefork]

(`amqp_compare.sh` makes the virtualenv and a vhost, and runs this file in it.)

For each worker kind, in one run on this machine:

1. a fresh queue is filled with N `add(2, 3)` messages by the real Python Celery client
   (py-amqp, `app.send_task`), and the send rate is reported;
2. the worker starts on the filled queue;
3. the drain time runs from the first message taken (the queue's ready count drops) to
   the last result stored in Redis (Celery: N result keys exist; Sprout: `--max-jobs N`
   exits once N results are stored).

Both store results in Redis database 14 (flushed before each kind), so each worker does
the same work per job: decode, run, store, ack.
"""
import argparse
import os
import subprocess
import sys
import time
import uuid

import redis
from celery import Celery
from kombu import Connection

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
VHOST = os.environ.get("BENCH_VHOST", "sprout-bench")
BROKER = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
RESULT_DB = 14
RESULTS = f"redis://127.0.0.1:6379/{RESULT_DB}"


def fill(queue: str, jobs: int) -> float:
    """Sends `jobs` add(2, 3) tasks with the Python client; returns sends per second."""
    app = Celery("bench_producer", broker=BROKER)
    app.conf.task_default_queue = queue
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(jobs):
            app.send_task("add", (2, 3), queue=queue, producer=producer)
    return jobs / (time.perf_counter() - started)


def ready(queue: str) -> int:
    with Connection(BROKER) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def wait_queued(queue: str, jobs: int, timeout: float = 30.0) -> None:
    """Waits until RabbitMQ holds all `jobs` (publishes are not confirmed, so the last
    ones may still be in flight when `fill` returns); the worker starts after."""
    deadline = time.monotonic() + timeout
    while (queued := ready(queue)) < jobs:
        if time.monotonic() > deadline:
            sys.exit(f"only {queued} of {jobs} sent jobs reached {queue}")
        time.sleep(0.01)


def wait_first_taken(queue: str, jobs: int, proc) -> float:
    while ready(queue) >= jobs:
        if proc.poll() is not None:
            sys.exit(f"worker exited early with {proc.returncode}")
        time.sleep(0.002)
    return time.perf_counter()


def celery_worker(pool: str, queue: str):
    args = ["-P", pool]
    if pool == "prefork":
        args += ["-c", str(os.cpu_count() or 2)]
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
    results = redis.Redis(db=RESULT_DB)
    queue = f"bench-{pool}-{uuid.uuid4().hex[:8]}"
    send_rate = fill(queue, jobs)
    wait_queued(queue, jobs)
    proc = celery_worker(pool, queue)
    try:
        first = wait_first_taken(queue, jobs, proc)
        while results.dbsize() < jobs:
            if proc.poll() is not None:
                sys.exit(f"celery worker exited early with {proc.returncode}")
            time.sleep(0.01)
        done = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait()
    return send_rate, jobs / (done - first)


def drain_sprout(jobs: int, concurrency: int) -> tuple[float, float]:
    results = redis.Redis(db=RESULT_DB)
    queue = f"bench-sprout-{uuid.uuid4().hex[:8]}"
    send_rate = fill(queue, jobs)
    wait_queued(queue, jobs)
    binary = os.environ.get("SPROUT_BIN", os.path.join(REPO, "target", "release", "sprout"))
    tasks = os.environ.get("TASKS_DIR", os.path.join(REPO, "target", "tasks"))
    env = dict(os.environ, SPROUT_LOG="warn",
               SPROUT_CACHE_DIR=os.path.join(REPO, "target", "bench-cache"))
    cmd = [binary, "worker", "--broker", BROKER, "--result-backend", RESULTS,
           "--tasks", tasks, "-Q", queue, "-c", str(concurrency), "--max-jobs", str(jobs)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = wait_first_taken(queue, jobs, proc)
    if proc.wait() != 0:
        sys.exit(f"sprout worker exited with {proc.returncode}")
    done = time.perf_counter()
    stored = results.dbsize()
    if stored < jobs:
        sys.exit(f"sprout worker exited with only {stored} of {jobs} results stored")
    return send_rate, jobs / (done - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30000, help="jobs for the Sprout worker")
    parser.add_argument("--celery-jobs", type=int, default=3000, help="jobs per Celery pool")
    parser.add_argument("--concurrency", type=int, default=200, help="Sprout's -c")
    parser.add_argument("--workers", default="sprout,solo,prefork")
    opts = parser.parse_args()

    rows = []
    for kind in opts.workers.split(","):
        redis.Redis(db=RESULT_DB).flushdb()
        if kind == "sprout":
            send, drain = drain_sprout(opts.jobs, opts.concurrency)
            label, jobs = f"sprout worker -c {opts.concurrency}", opts.jobs
        else:
            send, drain = drain_celery(kind, opts.celery_jobs)
            label, jobs = f"celery worker -P {kind}", opts.celery_jobs
        rows.append((label, jobs, send, drain))
        print(f"{label:<28} {jobs:>7} jobs  python send {send:>7.0f}/s  drain {drain:>8.0f} jobs/s",
              flush=True)
    redis.Redis(db=RESULT_DB).flushdb()

    best_celery = max((d for label, _, _, d in rows if label.startswith("celery")), default=None)
    sprout = [d for label, _, _, d in rows if label.startswith("sprout")]
    if best_celery and sprout:
        print(f"sprout / best celery pool: {sprout[0] / best_celery:.1f}x")


if __name__ == "__main__":
    main()
