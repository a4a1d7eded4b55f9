"""CLI start-up time: `deepcoder --help` and `deepcoder plugins --all --json` with every plugin installed.

Prints JSON with the median wall time of several runs of each, next to a bare
`python -c pass` (the interpreter's own floor) and `python -c "import torch"` (what an
eager import of the ML stack would cost), all measured in this one run.
Target (issue 2): each deepcoder command under 0.5 s.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time

RUNS = 7


def median_seconds(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def main() -> None:
    exe = shutil.which("deepcoder") or sys.exit("deepcoder is not installed (make install)")
    results = {
        "runs": RUNS,
        "python_floor": median_seconds([sys.executable, "-c", "pass"]),
        "deepcoder_help": median_seconds([exe, "--help"]),
        "deepcoder_plugins_all_json": median_seconds([exe, "plugins", "--all", "--json"]),
        "naive_import_torch": median_seconds([sys.executable, "-c", "import torch"]),
        "target_seconds": 0.5,
    }
    results["meets_target"] = (
        max(results["deepcoder_help"], results["deepcoder_plugins_all_json"]) < 0.5
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
