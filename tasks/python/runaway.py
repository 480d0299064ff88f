"""Tasks that never end on their own, or ask for too much: the worker's limits end them."""

from sprout_task import task


@task(name="py.loop")
def loop():
    """Spins forever: ends OutOfFuel (or TimeLimitExceeded under a short time limit)."""
    n = 0
    while True:
        n += 1


@task(name="py.alloc")
def alloc(mib: int = 1024):
    """Allocates `mib` MiB at once: past the memory limit it ends MemoryLimitExceeded."""
    block = bytearray(mib << 20)
    return len(block)


@task(name="py.output")
def output(kib: int = 2048):
    """Returns a string of `kib` KiB: past the output cap the job fails."""
    return "x" * (kib << 10)


@task(name="py.sleep")
def sleep(seconds: float = 10.0):
    """Blocks in time.sleep: the wall-clock time limit ends it (no fuel is burned)."""
    import time

    time.sleep(seconds)
    return seconds
