"""Natively (``pytest``), the worker's services are this module's in-memory fakes.

::

    from sprout_task import testing

    def test_fetch(monkeypatch):
        testing.reset()
        testing.set_config("api_url", "http://feeds.test")
        testing.mock_http(lambda req: http.Response(200, body=b"<rss/>"))
        assert my_task("x") == ...
        assert ("info", "fetched x") in testing.logs()

Inside a task file none of this is used: the calls go to the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from ._host import JobInfo

if TYPE_CHECKING:
    from .http import Request, Response

__all__ = ["reset", "set_job", "set_config", "logs", "progress", "mock_http", "run"]


@dataclass
class _State:
    job: JobInfo = field(default_factory=lambda: JobInfo("test-job", "test", 0, "celery"))
    config: Dict[str, str] = field(default_factory=dict)
    logs: List[Tuple[str, str]] = field(default_factory=list)
    progress: List[Tuple[int, int]] = field(default_factory=list)
    http: Optional[Callable[["Request"], "Response"]] = None


_state = _State()


def reset() -> None:
    """Forgets the job, config values, logs, progress and HTTP fake set so far."""
    global _state
    _state = _State()


def set_job(id: str = "test-job", task: str = "test", retries: int = 0, queue: str = "celery") -> None:
    """Sets what :func:`sprout_task.job` returns."""
    _state.job = JobInfo(id=id, task=task, retries=retries, queue=queue)


def set_config(key: str, value: str) -> None:
    """Makes :func:`sprout_task.config` return ``value`` for ``key``."""
    _state.config[key] = value


def logs() -> List[Tuple[str, str]]:
    """The ``(level, message)`` lines logged so far."""
    return list(_state.logs)


def progress() -> List[Tuple[int, int]]:
    """The ``(done, total)`` reports so far."""
    return list(_state.progress)


def mock_http(handler: Optional[Callable[["Request"], "Response"]]) -> None:
    """Answers :mod:`sprout_task.http` requests with ``handler`` (``None``: no fake)."""
    _state.http = handler


def run(name: str, args: Optional[list] = None, kwargs: Optional[dict] = None):
    """Runs task ``name`` exactly as a worker would: JSON in, JSON out.

    Returns the decoded result; raises :class:`sprout_task.TaskError` with the kind and
    message the job would fail with (kind ``Retry`` for a retry request).
    """
    import json

    from ._errors import TaskError
    from ._registry import dispatch

    result = dispatch(name, json.dumps(args or []), json.dumps(kwargs or {}))
    if isinstance(result, str):
        return json.loads(result)
    kind, message, _countdown, _retry = result
    raise TaskError(kind, message)
