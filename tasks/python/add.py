"""`py.add(a, b)`: the smallest Python task (the benchmark's unit of work)."""

from sprout_task import task


@task(name="py.add")
def add(a, b):
    """Returns a + b."""
    return a + b
