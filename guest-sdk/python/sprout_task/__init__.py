"""Write Sprout tasks in Python: Celery-style functions compiled into a task file.

::

    from sprout_task import task, TaskError, Retry

    @task(name="shop.total")
    def total(items: list, discount: float = 0) -> float:
        if discount < 0:
            raise ValueError("discount must not be negative")
        return sum(qty * price for qty, price in items) - discount

``sprout build shop.py -o out/`` turns the module into ``out/shop.wasm`` (plus its
manifest); a Sprout worker runs it in the same sandbox as any task: fuel, memory and
time limits, deny-by-default capabilities.

- Arguments are bound like a Python call; results are JSON-encoded.
- Any exception fails the job with its class name as the kind (a Celery client
  re-raises ``ValueError`` as ``ValueError``); :class:`TaskError` sets the kind
  explicitly; :class:`Retry` asks for another attempt.
- :func:`log`, :func:`progress`, :func:`job` and :func:`config` talk to the worker;
  :mod:`sprout_task.http` does blocking HTTP through the manifest's allow-list.
- Natively (plain ``pytest``) the same functions run against the fakes in
  :mod:`sprout_task.testing`: nothing needs building to test a task.
"""

from ._errors import Retry, TaskError
from ._host import IN_WORKER, JobInfo, config, job, log, progress
from ._registry import Task, registered, task

__all__ = [
    "task",
    "Task",
    "TaskError",
    "Retry",
    "log",
    "progress",
    "job",
    "config",
    "JobInfo",
    "registered",
    "IN_WORKER",
]

__version__ = "0.1.0"
