"""Load test of `fastbark serve` on localhost: concurrent clients, batching on vs off, in the same run.

A server is started (a subprocess, 127.0.0.1 only) on a random-weight checkpoint; `--clients` threads
each send `--requests` seeded requests (bounded in count, and each in time), streaming the response.
Reports throughput, p50/p95/p99 latency, time to first byte, errors, the server's peak memory, and
checks that every response equals the same request generated alone (a local engine, same threads),
and how many responses are distinct (each request has its own seed, and the checkpoint's random
EnCodec codebooks make audio depend on the tokens: the identity check can fail).
Then the same with `--max-batch 1` (one at a time): the ratio is batching's gain.

    python benchmarks/load.py --size tiny --clients 64 --requests 2 --json benchmarks/load-tiny-64.json
    python benchmarks/load.py --size small --clients 16 --requests 1 --tokens 16 --json benchmarks/load-small-16.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from fastbark.testing import write_random_checkpoint

TEXTS = ["The dog is cute.", "Hello world, how are you?", "I am a hobbyist on a laptop.",
         "The weather is nice today.", "Bark turns text into speech.", "One more sentence to say."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, max_batch: int, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastbark", "serve", "--model", str(folder), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-queue", "1024", "--threads", str(threads), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(url: str, requests: list[dict], clients: int, timeout: float) -> dict:
    """Each client thread sends its share of `requests` one after another; returns per-request timings."""
    results: list[dict | None] = [None] * len(requests)

    def client(index: int) -> None:
        with httpx.Client(timeout=timeout) as http:
            for i in range(index, len(requests), clients):
                start, first = time.perf_counter(), None
                try:
                    with http.stream("POST", url + "/v1/audio/speech", json=requests[i]) as r:
                        body = b""
                        for piece in r.iter_bytes():
                            first = first or time.perf_counter() - start
                            body += piece
                    results[i] = dict(status=r.status_code, latency=time.perf_counter() - start, ttfb=first, body=body)
                except httpx.HTTPError as e:
                    results[i] = dict(status=type(e).__name__, latency=time.perf_counter() - start, ttfb=None,
                                      body=b"")
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(wall_s=time.perf_counter() - start, results=results)


def summarise(run: dict, expected: list[bytes]) -> dict:
    results = run["results"]
    ok = [r for r in results if r["status"] == 200]
    latency = np.array([r["latency"] for r in ok]) if ok else np.zeros(1)
    ttfb = np.array([r["ttfb"] for r in ok if r["ttfb"] is not None]) if ok else np.zeros(1)
    return dict(requests=len(results), errors=len(results) - len(ok), wall_s=run["wall_s"],
                requests_per_s=len(ok) / run["wall_s"],
                identical_to_alone=sum(e is not None and r["body"] == e for r, e in zip(results, expected)),
                # every request has its own seed: distinct audio shows that "identical" could have failed
                distinct_responses=len({r["body"] for r in ok}),
                latency_p50=float(np.percentile(latency, 50)), latency_p95=float(np.percentile(latency, 95)),
                latency_p99=float(np.percentile(latency, 99)), ttfb_p50=float(np.percentile(ttfb, 50)),
                ttfb_p95=float(np.percentile(ttfb, 95)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "small", "large"])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--tokens", type=int, default=16, help="semantic tokens forced per request")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="the server engine's threads (and the local check's)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds one request may take, its wait in the queue included")
    p.add_argument("--quantize", choices=["int8"], help="serve (and check against) the int8 mode")
    p.add_argument("--only-batched", action="store_true", help="skip the one-at-a-time run")
    p.add_argument("--busy", action="store_true", help="keep one other process busy on a core during the server runs")
    p.add_argument("--alone", choices=["local", "server"], default="local",
                   help="the alone reference: a local engine, or the one-at-a-time server run (max batch 1), "
                        "which then runs first")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.alone == "server" and args.only_batched:
        p.error("--alone server needs the one-at-a-time run; drop --only-batched")
    n = args.clients * args.requests
    requests = [{"model": "tts-1", "input": TEXTS[i % len(TEXTS)], "response_format": "pcm", "seed": i,
                 "semantic_temperature": 0.7, "max_semantic_tokens": args.tokens, "allow_early_stop": False}
                for i in range(n)]
    out = {"size": args.size, "clients": args.clients, "requests": n, "tokens": args.tokens,
           "threads": args.threads, "quantize": args.quantize, "busy_process": args.busy, "alone": args.alone,
           "date": time.strftime("%Y-%m-%d"), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(args.size, Path(tmp) / "bark")
        import torch
        import fastbark
        from fastbark.output import pcm16
        expected: list[bytes] | None = None
        if args.alone == "local":
            torch.set_num_threads(args.threads)
            tts = fastbark.Bark.from_pretrained(folder, threads=args.threads, quantize=args.quantize)
            extras = {k: v for k, v in requests[0].items() if k in ("semantic_temperature", "max_semantic_tokens",
                                                                     "allow_early_stop")}
            distinct = {}
            expected = []
            for r in requests:  # each request alone, once per distinct (text, seed)
                key = (r["input"], r["seed"])
                if key not in distinct:
                    distinct[key] = pcm16(tts.generate(r["input"], seed=r["seed"], **extras).audio)
                expected.append(distinct[key])
            del tts
        configs = (("batched", args.max_batch),) + ((("one at a time", 1),) if not args.only_batched else ())
        if args.alone == "server":  # the max-batch-1 server generates every request alone: it goes first
            configs = configs[::-1]
        for name, batch in configs:
            proc, url = start_server(folder, batch, args.threads, ["--quantize", args.quantize] if args.quantize else [])
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
            try:
                run = run_load(url, requests, args.clients, args.timeout)
                reference = expected is None  # --alone server: this run's responses are the alone ones
                if reference:
                    expected = [r["body"] if r["status"] == 200 else None for r in run["results"]]
                row = summarise(run, expected)
                if reference:
                    row["identical_to_alone"] = "(the reference)"
                row["server_peak_rss_mb"] = peak_rss_mb(proc.pid)
                row["max_batch"] = batch
                metrics = httpx.get(url + "/metrics").text
                row["batches"] = next((float(line.split()[-1]) for line in metrics.splitlines()
                                       if line.startswith("fastbark_batch_size_count")), 0)
                out["runs"][name] = row  # kept, and shown, before the server stops
                print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                stop = time.perf_counter()
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if name in out["runs"]:
                    out["runs"][name]["shutdown_s"] = time.perf_counter() - stop
    if not args.only_batched:
        batched, single = out["runs"]["batched"], out["runs"]["one at a time"]
        out["throughput_ratio"] = batched["requests_per_s"] / single["requests_per_s"]
        print(f"\n{args.clients} clients x {args.requests} requests, bark-{args.size}, {args.tokens} semantic tokens "
              f"each, {args.threads} engine threads: batching gives {out['throughput_ratio']:.2f}x the throughput")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
