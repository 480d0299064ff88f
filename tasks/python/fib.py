"""`fib(n)`: CPU-bound Python (iterative, so a big n runs long without recursing deep)."""

from sprout_task import task


@task(name="py.fib")
def fib(n: int) -> int:
    """The n-th Fibonacci number, modulo 2**64 (a JSON number stays exact)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    a, b = 0, 1
    for _ in range(n):
        a, b = b, (a + b) % 2**64
    return a
