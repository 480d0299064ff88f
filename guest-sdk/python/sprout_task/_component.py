"""The task file's exports: ``tasks`` and ``run`` of the ``sprout:task`` world.

``sprout build`` generates an entry module that imports the author's module (which
registers its tasks) and then this class; componentize-py exports it.
"""

from __future__ import annotations

from typing import List

from componentize_py_types import Err  # type: ignore[import-not-found]
from wit_world import WitWorld as _World  # type: ignore[import-not-found]
from wit_world.imports.sprout_task_types import (  # type: ignore[import-not-found]
    RetryRequest,
    TaskError as WitTaskError,
)

from ._registry import dispatch, registered


class WitWorld(_World):
    """The exports componentize-py binds to the ``python-task`` world."""

    def tasks(self) -> List[str]:
        return registered()

    def run(self, task: str, args_json: str, kwargs_json: str) -> str:
        result = dispatch(task, args_json, kwargs_json)
        if isinstance(result, str):
            return result
        kind, message, countdown_ms, is_retry = result
        retry = RetryRequest(countdown_ms=countdown_ms) if is_retry else None
        raise Err(WitTaskError(kind=kind, message=message, retry=retry))
