"""What the C kernels' tuning (fastbark/backends/cpu/tuning.py) chooses on this machine, and how steady that is.

Runs the tuning `--runs` times, each with an empty measurement cache (the candidate builds are compiled once,
then reused: the first run's time includes the compiles), and prints, per parameter, each run's choice and its
candidates' times. A choice that moves between runs is one whose candidates this machine cannot tell apart.

    python benchmarks/tuning.py --runs 3 --json benchmarks/tuning-zen3.json
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench import cpu_description
from fastbark.backends.cpu.choice import ChoiceCache
from fastbark.backends.cpu.library import build_products
from fastbark.backends.cpu.tuning import KNOBS, tune


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise SystemExit("no C compiler")
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            defines, choices = tune(functools.partial(build_products, compiler),
                                    ChoiceCache(Path(tmp), ["benchmark"]))
            runs.append({"seconds": time.perf_counter() - start, "defines": defines,
                         "choices": {k.name: {"chosen": c.chosen, "ms": c.ms, "refused": c.refused}
                                     for k, c in zip(KNOBS, choices)}})
    cpu = cpu_description()
    print(f"\n{cpu}; {args.threads} threads")
    print("| parameter | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
    print("| --- |" + " --- |" * len(runs))
    for knob in KNOBS:
        cells = []
        for run in runs:
            c = run["choices"][knob.name]
            times = ", ".join(f"{v} {ms:.2f}" for v, ms in sorted(c["ms"].items(), key=lambda kv: kv[1]))
            cells.append(f"**{c['chosen']}** ({times} ms){' refused: ' + str(c['refused']) if c['refused'] else ''}")
        print(f"| {knob.name} | " + " | ".join(cells) + " |")
    print("| seconds (run 1: compiles included) | " + " | ".join(f"{r['seconds']:.1f}" for r in runs) + " |")
    result = {"cpu": cpu, "threads": args.threads, "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
