"""Task functions and an actor for the executor tests: importable by worker processes."""

import os


def square_and_report(reporter, value):
    reporter({"samples": value, "successes": value}, force=True)
    if value < 0:
        raise ValueError(f"negative {value}")
    return value * value


def total(array, start, stop):
    return float(array[start:stop].sum())


class Counter:
    """Holds state across calls; ``setup`` says which process it lives in and what its environment is."""

    def __init__(self, offset):
        self.offset = offset
        self.calls = 0

    def setup(self):
        return {"pid": os.getpid(), "marker": os.environ.get("MMDATA_TEST_MARKER")}

    def add(self, value):
        self.calls += 1
        return value + self.offset
