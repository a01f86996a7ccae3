"""The memory benchmark counts a run's worker processes, not only the process it started."""

import subprocess
import sys
import time

from benchmarks import memory


def test_the_peak_counts_the_memory_of_child_processes():
    # A parent that holds little and a child that holds 200 MB (written, so resident).
    child = "import numpy, time; a = numpy.ones(25_000_000); time.sleep(30)"
    parent = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); p.wait()"
    process = subprocess.Popen([sys.executable, "-c", parent])
    try:
        deadline = time.monotonic() + 20
        seen = 0
        while time.monotonic() < deadline and seen < 200_000:
            seen = max(seen, memory._tree_kb(process.pid))
            time.sleep(0.1)
        assert seen >= 200_000, seen
        assert memory._status_kb(process.pid) < 100_000  # the parent alone holds little
    finally:
        for descendant in __import__("psutil").Process(process.pid).children(recursive=True):
            descendant.kill()
        process.kill()
        process.wait()
