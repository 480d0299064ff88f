"""The host interface: the worker's imports inside a task file, a fake natively.

Inside a task file built by ``sprout build`` the generated ``wit_world`` bindings are
importable and every call goes to the worker. Anywhere else (``pytest``, a REPL) the
calls go to :mod:`sprout_task.testing`'s in-memory state, so task functions run
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

try:  # Inside a task file.
    from wit_world.imports import environment as _wit_env  # type: ignore[import-not-found]
    from wit_world.imports import host as _wit_host  # type: ignore[import-not-found]

    IN_WORKER = True
except ImportError:  # Natively.
    _wit_host = None
    _wit_env = None
    IN_WORKER = False

#: The prefix of the environment variables that carry a task's configuration values
#: (the manifest's ``[capabilities] config = { key = "value" }``).
CONFIG_ENV_PREFIX = "SPROUT_CONFIG_"

LEVELS = ("trace", "debug", "info", "warn", "error")


@dataclass(frozen=True)
class JobInfo:
    """What a task knows about the job it is running."""

    #: The job id (Celery's task id).
    id: str
    #: The task name being run.
    task: str
    #: How many times this job was retried before this attempt.
    retries: int
    #: The queue the job came from.
    queue: str


def log(level: str, message: str) -> None:
    """Writes ``message`` to the job's log at ``level`` (trace, debug, info, warn, error).

    The worker keeps the log with the job (bounded). Natively the line is recorded in
    :func:`sprout_task.testing.logs`.
    """
    level = str(level).lower()
    if level == "warning":
        level = "warn"
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    message = str(message)
    if _wit_host is not None:
        _wit_host.log(_wit_host.Level[level.upper()], message)
    else:
        from . import testing

        testing._state.logs.append((level, message))


def progress(done: int, total: int) -> None:
    """Reports progress: ``done`` out of ``total`` units (both whole numbers ≥ 0)."""
    for name, value in (("done", done), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
            raise ValueError(f"progress {name} must be a whole number in 0..2**64, not {value!r}")
    if _wit_host is not None:
        _wit_host.progress(done, total)
    else:
        from . import testing

        testing._state.progress.append((done, total))


def job() -> JobInfo:
    """The job being run. Natively: the one :func:`sprout_task.testing.set_job` set."""
    if _wit_host is not None:
        info = _wit_host.job()
        return JobInfo(id=info.id, task=info.task, retries=info.retries, queue=info.queue)
    from . import testing

    return testing._state.job


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """A configuration value the task's manifest grants, or ``default``.

    The manifest's ``[capabilities] config = { api_url = "…" }`` makes
    ``config("api_url")`` return that string. Natively: values set with
    :func:`sprout_task.testing.set_config`.
    """
    if _wit_env is not None:
        # The environment is read per call: `os.environ` is a snapshot taken when the
        # task file was built, not the job's.
        wanted = CONFIG_ENV_PREFIX + key
        for name, value in _wit_env.get_environment():
            if name == wanted:
                return value
        return default
    from . import testing

    return testing._state.config.get(key, default)
