"""`fastbark batch` throughput: 32 short items locally, and on a local Ray with 1 actor x 2 threads and
2 actors x 1 thread, in the same run (each a fresh output folder).

    python benchmarks/batch_throughput.py --size small --items 32 --tokens 16 --json benchmarks/batch-small-32.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastbark.testing import write_random_checkpoint

TEXTS = ["The dog is cute.", "Hello world, how are you?", "I am a hobbyist on a laptop.",
         "The weather is nice today.", "Bark turns text into speech.", "One more sentence to say."]


def run(folder: Path, jobs: Path, out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fastbark", "batch", str(jobs), "--out", str(out), "--model", str(folder),
                    "-q", *extra], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "large"])
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--tokens", type=int, default=16, help="semantic tokens forced per item")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json")
    args = p.parse_args(argv)
    configs = {"local, 2 threads": ["--threads", "2"],
               "ray, 1 actor x 2 threads": ["--ray", "--actors", "1", "--cpus-per-actor", "2"],
               "ray, 2 actors x 1 thread": ["--ray", "--actors", "2", "--cpus-per-actor", "1"]}
    results = {"size": args.size, "items": args.items, "tokens": args.tokens, "batch_size": args.batch_size,
               "date": time.strftime("%Y-%m-%d"), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_random_checkpoint(args.size, tmp / "bark")
        jobs = tmp / "jobs.jsonl"
        jobs.write_text("\n".join(json.dumps({"id": f"item{i:03d}", "text": TEXTS[i % len(TEXTS)], "seed": i,
                                              "semantic_temperature": 0.7, "max_semantic_tokens": args.tokens,
                                              "allow_early_stop": False}) for i in range(args.items)) + "\n")
        for name, extra in configs.items():
            seconds = run(folder, jobs, tmp / name.replace(" ", "_").replace(",", ""),
                          [*extra, "--batch-size", str(args.batch_size)])
            results["runs"][name] = {"seconds": seconds, "items_per_s": args.items / seconds}
            print(f"{name:<28}{seconds:>8.1f} s{args.items / seconds:>8.3f} items/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
