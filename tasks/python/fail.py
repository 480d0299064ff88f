"""Tasks that fail on purpose: each failure reaches the client as the exception's class."""

from sprout_task import Retry, TaskError, task


class FeedError(Exception):
    """A task's own exception class: its name is the job's error kind."""


@task(name="py.raise")
def raise_(kind: str = "ValueError", message: str = "boom"):
    """Raises the built-in exception named `kind`, or `FeedError`, with `message`."""
    if kind == "FeedError":
        raise FeedError(message)
    if kind == "Retry":
        raise Retry(message, countdown=1)
    if kind == "TaskError":
        raise TaskError("CustomKind", message)
    exc = __builtins__[kind] if isinstance(__builtins__, dict) else getattr(__builtins__, kind)
    raise exc(message)
