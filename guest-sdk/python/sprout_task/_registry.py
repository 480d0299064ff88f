"""The task registry, the ``@task`` decorator, and the one function that runs a task.

:func:`dispatch` is what a task file's ``run`` export calls: JSON in, JSON out, and
every failure turned into a ``(kind, message, countdown_ms)`` triple the worker files
as the job's error. Natively the same function runs a task exactly as the worker would.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union, overload

from ._errors import Retry, TaskError

__all__ = ["Task", "task", "registered", "dispatch", "Failure"]

F = TypeVar("F", bound=Callable[..., Any])

_TASKS: Dict[str, "Task"] = {}

#: Kinds the SDK itself produces (besides the class name of a raised exception).
DECODE_ERROR = "DecodeError"
ENCODE_ERROR = "EncodeError"
NOT_REGISTERED = "NotRegistered"
RETRY = "Retry"


class Task:
    """A registered task: the function plus its name. Calling it calls the function."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.run: Callable[..., Any] = fn
        self.name: str = name
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


@overload
def task(fn: F) -> Task: ...
@overload
def task(fn: None = None, *, name: Optional[str] = None) -> Callable[[F], Task]: ...


def task(
    fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None
) -> Union[Task, Callable[[Callable[..., Any]], Task]]:
    """Registers a function as a task, like Celery's ``@app.task``.

    ``@task`` or ``@task(name="proj.tasks.add")``. Without a name the task is called
    ``<module>.<function>`` (Celery's default). Arguments arrive as JSON values bound
    like a Python call (``args`` positionally, ``kwargs`` by keyword); the return value
    must be JSON-encodable (``datetime``, ``Decimal`` and ``UUID`` become strings, as
    with Celery's JSON serializer).

    Raises ``ValueError`` when another task already has the name.
    """

    def register(f: Callable[..., Any]) -> Task:
        if not callable(f):
            raise TypeError(f"@task needs a function, not {type(f).__name__}")
        task_name = name if name is not None else f"{f.__module__}.{f.__name__}"
        if not isinstance(task_name, str) or not task_name.strip():
            raise ValueError("a task name must be a non-empty string")
        existing = _TASKS.get(task_name)
        if existing is not None and existing.run is not f:
            raise ValueError(f"two tasks are named {task_name!r}")
        registered_task = Task(f, task_name)
        _TASKS[task_name] = registered_task
        return registered_task

    if fn is not None:
        return register(fn)
    return register


def registered() -> List[str]:
    """The names of the registered tasks, sorted."""
    return sorted(_TASKS)


#: A failed run: ``(kind, message, retry countdown in ms or None, is_retry)``.
Failure = Tuple[str, str, Optional[int], bool]


def _encode_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _kind_of(exc: BaseException) -> str:
    if isinstance(exc, TaskError):
        return exc.kind
    return type(exc).__name__


def dispatch(name: str, args_json: str, kwargs_json: str) -> Union[str, Failure]:
    """Runs task ``name`` with JSON ``args`` (an array) and ``kwargs`` (an object).

    Returns the JSON result text, or a :data:`Failure` for any exception: its class
    name is the kind (``TaskError`` gives its own kind; :class:`Retry` asks for another
    attempt). Never raises for a task's exception; ``KeyboardInterrupt`` and
    ``SystemExit`` are reported like any other.
    """
    t = _TASKS.get(name)
    if t is None:
        return (NOT_REGISTERED, f"no task named {name!r} (this file has: {', '.join(registered())})", None, False)
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except (ValueError, RecursionError) as e:
        return (DECODE_ERROR, f"arguments are not valid JSON: {e}", None, False)
    if not isinstance(args, list):
        return ("TypeError", f"args must be a JSON array, not {type(args).__name__}", None, False)
    if not isinstance(kwargs, dict):
        return ("TypeError", f"kwargs must be a JSON object, not {type(kwargs).__name__}", None, False)
    try:
        value = t.run(*args, **kwargs)
    except Retry as r:
        return (RETRY, r.message, r.countdown_ms, True)
    except BaseException as e:  # noqa: BLE001 - every exception is the job's error
        return (_kind_of(e), str(e), None, False)
    try:
        return json.dumps(value, default=_encode_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as e:
        return (ENCODE_ERROR, f"the result of {name} is not JSON-encodable: {e}", None, False)
