#!/usr/bin/env python3
"""Celery canvases a worker must complete, checked from a real Celery client.

    canvas_check.py BROKER_URL QUEUE [group] [link] [chord] [chord_fail]

Results are read from the broker's URL, or from SPROUT_TEST_RESULTS when set (an
amqp:// broker with results in Redis).

Tasks used (Sprout's example tasks): add(a, b), echo(x), fail(message).
Prints one line per failed check, then "N passed, M failed"; exit 0 when all passed.
"""
import gc
import os
import sys

from celery import Celery, chord, group, signature

TIMEOUT = 60


def main(argv):
    broker, queue, *checks = argv
    checks = checks or ["group", "link", "chord", "chord_fail"]
    app = Celery("canvas_check", broker=broker, backend=os.environ.get("SPROUT_TEST_RESULTS", broker))
    app.conf.task_default_queue = queue

    def sig(name, *args, **options):
        return signature(name, args=list(args), app=app).set(queue=queue, **options)

    passed, failed = 0, 0
    results = []  # every AsyncResult, to stop waiting on them before exiting

    def keep(res):
        results.append(res)
        return res

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            passed += 1
        except Exception as exc:  # noqa: BLE001 - report every kind of failure
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")

    def group_results():
        res = keep(group(sig("add", i, i) for i in range(10)).apply_async())
        got = res.get(timeout=TIMEOUT)
        assert got == [2 * i for i in range(10)], got

    def link():
        res = keep(sig("add", 1, 2).apply_async(link=sig("echo")))
        assert res.get(timeout=TIMEOUT) == 3
        children = res.children or []
        assert len(children) == 1, f"children {children!r}"
        assert keep(children[0]).get(timeout=TIMEOUT) == 3

    def chord_results():
        res = keep(chord([sig("add", i, 1) for i in range(5)], sig("echo")).apply_async())
        got = res.get(timeout=TIMEOUT)
        assert got == [1, 2, 3, 4, 5], got

    def chord_failure():
        res = keep(chord([sig("add", 1, 1), sig("fail", "hdr")], sig("echo")).apply_async())
        # The body's own result (res.get() would re-raise the failed part's error first).
        body = keep(app.AsyncResult(res.id))
        try:
            body.get(timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            assert type(exc).__name__ == "ChordError", repr(exc)
            assert "ValueError" in str(exc), str(exc)
        else:
            raise AssertionError("the chord body ran although a part failed")

    cases = {"group": group_results, "link": link, "chord": chord_results, "chord_fail": chord_failure}
    for name in checks:
        check(name, cases[name])
    for res in results:
        app.backend.remove_pending_result(res)
    results.clear()
    gc.collect()
    app.close()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
