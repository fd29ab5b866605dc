"""Benchmarks from ../shared/BENCHMARKS.md, printed as one JSON object per line.

  python experiments/benchmark.py --workloads=w2 --models=tiny,small

Each workload reports compile (first-call) time separately from the median steady-state time, and
utilisation against peaks measured in this same process.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

from rlhf_jax import benchmarks

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["w2"], "Workloads to run: " + ",".join(benchmarks.WORKLOADS))
flags.DEFINE_list("models", ["tiny", "small"], "Model presets.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions after the first (compiling) call.")


def main(argv):
  del argv
  peaks = benchmarks.measure_peaks()
  print(json.dumps({"workload": "peaks", **peaks}), flush=True)
  for name in FLAGS.workloads:
    if name not in benchmarks.WORKLOADS:
      sys.exit(f"unknown workload {name!r}; choose from {sorted(benchmarks.WORKLOADS)}")
    for model in FLAGS.models:
      print(json.dumps(benchmarks.WORKLOADS[name](model, peaks, FLAGS.repeats)), flush=True)


if __name__ == "__main__":
  app.run(main)
