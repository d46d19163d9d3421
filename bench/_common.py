"""What the benchmark scripts share: one command timed under ``/usr/bin/time -v``."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def run_timed(argv: list[str], tail: int = 2000) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Wall seconds, peak RSS in bytes and the finished process (``/usr/bin/time``'s report in its
    stderr) of one command under /usr/bin/time -v; exits with the last ``tail`` characters of its
    stderr if it fails."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"command failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-tail:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return seconds, peak_kb * 1024, done
