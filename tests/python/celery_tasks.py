"""Python twins of Sprout's example tasks, for a real Celery worker in the interop tests.

A job published by `sprout send --broker redis://...` must be run by this worker
exactly as if a Python client had sent it.

    SPROUT_TEST_BROKER=redis://127.0.0.1:6379/11 \
        celery -A celery_tasks worker -P solo -Q QUEUE --without-gossip --without-mingle
"""
import os

from celery import Celery

BROKER = os.environ.get("SPROUT_TEST_BROKER", "redis://127.0.0.1:6379/0")

# Results go to the broker's database unless SPROUT_TEST_RESULTS names another.
app = Celery("sprout_interop", broker=BROKER, backend=os.environ.get("SPROUT_TEST_RESULTS", BROKER))
app.conf.task_default_queue = os.environ.get("SPROUT_TEST_QUEUE", "celery")
app.conf.worker_hijack_root_logger = False


@app.task(name="add")
def add(a, b):
    return a + b


@app.task(name="mul")
def mul(a, b):
    return a * b


@app.task(name="echo")
def echo(*args, **kwargs):
    return args[0] if len(args) == 1 else list(args)


@app.task(name="fail")
def fail(message):
    raise ValueError(message)
