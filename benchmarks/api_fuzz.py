"""Schemathesis against `fastbark serve`'s /openapi.json: generated requests, and no server error allowed.

    python benchmarks/api_fuzz.py --max-examples 40 --json benchmarks/api-fuzz.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from fastbark.testing import write_random_checkpoint
from load import start_server


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-examples", type=int, default=40)
    p.add_argument("--json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint("tiny", Path(tmp) / "bark")
        proc, url = start_server(folder, 8, 1, ["--max-input-chars", "300"])
        try:
            start = time.perf_counter()
            run = subprocess.run(["st", "run", url + "/openapi.json", "--checks", "not_a_server_error",
                                  "--max-examples", str(args.max_examples), "--request-timeout", "300",
                                  "--workers", "1"], capture_output=True, text=True, timeout=3600)
            seconds = time.perf_counter() - start
            health = subprocess.run(["curl", "-s", url + "/health"], capture_output=True, text=True).stdout
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    summary = [line for line in run.stdout.splitlines() if line.strip()][-12:]
    result = {"exit_code": run.returncode, "seconds": seconds, "server_alive_after": '"ok"' in health,
              "summary": summary, "date": time.strftime("%Y-%m-%d"), "max_examples": args.max_examples}
    print("\n".join(summary))
    print(f"schemathesis exit {run.returncode} in {seconds:.0f} s; server still healthy: {result['server_alive_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
