#!/usr/bin/env python3
"""Sends Celery messages whose time values are out of range, with a real Celery client.

    edges_send.py BROKER_URL KEY_PREFIX QUEUE

BROKER_URL has no query (the key prefix is given to kombu and to the result backend as
`global_keyprefix`, as Sprout reads it from `?global_keyprefix=`). Tasks used (Sprout's
example tasks): add(a, b), echo(x).

Nothing waits for a result: the test (tests/all/edges.rs) reads what the Sprout worker
stored. Prints one JSON object: case name -> the id whose result to check.
"""
import json
import sys

from celery import Celery, chain, signature


def main(argv):
    broker, prefix, queue = argv
    app = Celery("edges_send", broker=broker, backend=broker)
    app.conf.task_default_queue = queue
    app.conf.broker_transport_options = {"global_keyprefix": prefix}
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}

    def sig(name, *args, **options):
        return signature(name, args=list(args), app=app).set(queue=queue, **options)

    ids = {}

    def send(case, name, *args, **options):
        ids[case] = sig(name, *args).apply_async(**options).id

    # Headers: timelimit = [time_limit, soft_time_limit].
    send("time_limit_huge", "add", 1, 2, time_limit=1e300)
    send("soft_time_limit_negative", "add", 1, 2, soft_time_limit=-1)
    # Python writes float("inf") as the JSON token Infinity: no JSON parser reads that
    # envelope, so it can only be dead-lettered, without an id.
    send("soft_time_limit_inf", "add", 1, 2, soft_time_limit=float("inf"))
    # A countdown or expiry of 1e15 s overflows Python's datetime in the client itself;
    # 1e10 s (317 years) is the most it sends: an eta/expires header past Sprout's 100 years.
    send("countdown_huge", "add", 1, 2, countdown=1e10)
    send("expires_huge", "add", 1, 2, expires=1e10)
    # A negative expiry is in the past: the job is expired (REVOKED), as in Celery.
    send("expires_negative", "add", 1, 2, expires=-10)
    # Signatures run after their parent: their options are checked when the parent's
    # message is decoded.
    send("link_countdown_huge", "add", 1, 2, link=sig("echo", countdown=1e15))
    send("link_time_limit_huge", "add", 1, 2, link=sig("echo", time_limit=1e300))
    send("link_error_expires_inf", "add", 1, 2, link_error=sig("echo", expires=float("inf")))
    res = chain(sig("add", 1, 2), sig("echo", countdown=1e15)).apply_async()
    ids["chain_countdown_huge"] = res.parent.id
    # The worker keeps serving.
    send("ok", "add", 2, 3)
    print(json.dumps(ids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
