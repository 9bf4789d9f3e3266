"""Run every benchmark and write its results into docs/benchmarks.md (`make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "record_overhead.py",
    "demo_routing.py",
    "load_forecast.py",
    "path_predict.py",
    "simulate.py",
    "offload.py",
]

if __name__ == "__main__":
    for script in BENCHMARKS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), "--write"], check=True)
