"""`python -m benchmarks.peak OUT.json CMD...`: run CMD, write its seconds and peak RSS to OUT.json.

The measuring process must be small: a child's peak RSS (ru_maxrss) starts from what it
inherits at fork, so a benchmark that holds models in memory forks this lean process first.
"""

import json
import os
import subprocess
import sys
import time

if __name__ == "__main__":
    out, cmd = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    with open(out, "w") as fh:
        json.dump({"seconds": time.perf_counter() - start, "peak_rss_mib": usage.ru_maxrss / 1024,
                   "returncode": os.waitstatus_to_exitcode(status)}, fh)
