"""Start-up time of the command line: ``cccdask --help`` and a rerun of a finished store.

1. ``--help`` (and ``run --help``) in a fresh interpreter: the CLI imports NumPy, Dask,
   SciPy, xarray only inside the commands that need them (target < 1 s), against
   ``import cccdask.ccc`` (the heavy stack) for scale.
2. Optionally (``--rerun CONFIG``): ``cccdask run CONFIG`` on a store that is already
   complete with that config (target: a couple of seconds, no cluster started).

Each command runs ``--repeat`` times in a new process; the table gives the median and
the fastest wall-clock time. Timings on a loaded machine vary: compare within one run.

    python benchmarks/bench_cli.py --repeat 5 [--rerun path/to/config.yaml]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def wall_times(command: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "COLUMNS": "100"})
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rerun", help="a config whose store is complete: time its rerun")
    args = parser.parse_args()
    python = sys.executable
    commands = {
        "python -c pass (interpreter)": [python, "-c", "pass"],
        "cccdask --help": [python, "-m", "cccdask", "--help"],
        "cccdask run --help": [python, "-m", "cccdask", "run", "--help"],
        "python -c 'import cccdask.ccc' (heavy stack)": [python, "-c", "import cccdask.ccc"],
    }
    if args.rerun:
        commands[f"cccdask run {args.rerun} (complete store)"] = [python, "-m", "cccdask", "run", args.rerun]
    print(f"{'command':<60} {'median s':>9} {'min s':>7}")
    for label, command in commands.items():
        times = wall_times(command, args.repeat)
        print(f"{label:<60} {statistics.median(times):9.2f} {min(times):7.2f}")


if __name__ == "__main__":
    main()
