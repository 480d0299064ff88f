import time
from celery import Celery
from celery.exceptions import Reject
import os
URL = os.environ["CAP_URL"]
app = Celery("capapp", broker=URL, backend=URL)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_send_task_events=True, task_send_sent_event=False)

@app.task(name="proj.tasks.add")
def add(a, b):
    return a + b

@app.task(name="proj.tasks.boom")
def boom(msg):
    raise ValueError(msg)

@app.task(name="proj.tasks.flaky", bind=True, max_retries=1, default_retry_delay=0.2)
def flaky(self, x):
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("first try"), countdown=0.2)
    return {"x": x, "ok": True, "s": "text", "n": None}

@app.task(name="proj.tasks.sleepy")
def sleepy(s):
    time.sleep(s)
    return s

@app.task(name="proj.tasks.rejecter", bind=True, acks_late=True)
def rejecter(self):
    raise Reject("no thanks", requeue=False)
