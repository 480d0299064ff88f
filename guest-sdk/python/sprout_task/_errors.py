"""The exceptions a task raises to fail on purpose or to ask for another attempt."""

from __future__ import annotations

from typing import Optional

__all__ = ["TaskError", "Retry"]


class TaskError(Exception):
    """Fails the job with an explicit ``kind`` (Celery's ``exc_type``) and message.

    Any other exception fails the job too, with its class name as the kind
    (``ValueError``, ``KeyError``, ``FeedError``); raise ``TaskError`` when the kind
    should not be a class of your own::

        raise TaskError("FeedError", f"{url}: not an RSS feed")
    """

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message)
        if not isinstance(kind, str) or not kind:
            raise TypeError("TaskError kind must be a non-empty string")
        #: The exception-like type name the job fails with.
        self.kind: str = kind
        #: The human-readable reason.
        self.message: str = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"TaskError({self.kind!r}, {self.message!r})"


class Retry(Exception):
    """Asks the worker to run the job again instead of failing it (kind ``Retry``).

    ``countdown`` is the delay in seconds before the next attempt; ``None`` leaves it to
    the worker's backoff policy. The job's ``max_retries`` still applies: past it the
    job fails with kind ``Retry`` and this message::

        raise Retry(countdown=5, message="the feed is busy")
    """

    def __init__(self, message: str = "", countdown: Optional[float] = None) -> None:
        super().__init__(message)
        if countdown is not None:
            if isinstance(countdown, bool) or not isinstance(countdown, (int, float)):
                raise TypeError("Retry countdown must be a number of seconds or None")
            if not countdown >= 0 or countdown == float("inf"):
                raise ValueError("Retry countdown must be finite and not negative")
        #: Seconds to wait before the next attempt (``None``: the worker decides).
        self.countdown: Optional[float] = countdown
        #: Why the task wants another attempt.
        self.message: str = message

    @property
    def countdown_ms(self) -> Optional[int]:
        """The countdown in whole milliseconds, as the worker receives it."""
        if self.countdown is None:
            return None
        return int(round(self.countdown * 1000))

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"Retry({self.message!r}, countdown={self.countdown!r})"
