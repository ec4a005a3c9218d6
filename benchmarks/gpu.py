"""The device script: parity and speed of fastbark on a GPU, against transformers' Bark, in one command.

It needs nothing but what a lent GPU machine has (its own torch and transformers; fastbark from the
working tree by PYTHONPATH; no downloads): random weights at the real sizes, fixed token counts, greedy.
It writes `gpu.json` and `gpu.md` (a table) into `--out`. The checks of correctness and repeatability are
in `gpu_checks.py`; the speed measurements, the order of the tasks and the report are here.

    PYTHONPATH=. python benchmarks/gpu.py --device cuda --out "$OUT"                  # ~5 min on an H200
    python benchmarks/gpu.py --device cpu --sizes tiny --tokens 8 --batches 1,2 --out /tmp/g   # the smoke run

What it measures:
- `fastbark doctor` on the machine (torch's build, the GPUs, what each dtype would run);
- parity: float32 greedy tokens on the device, with the default backend (on CUDA: the CUDA backend, its
  steps replayed from CUDA graphs) and with plain torch, equal the CPU's (tiny model, batch 2, 300 semantic
  tokens, all three stages); float16 and bfloat16 greedy semantic tokens against float32 at each size
  (agreement: the share of positions before the first difference, and of equal positions);
- batch invariance on the device: 5 sampled, seeded texts alone and in one batch (tokens and audio), and
  each alone again (run-to-run repeats, per configuration);
- the fused Triton step against the torch step on the real model (logits, cache writes, a row's bits);
  a kernel profile of one step; the codec alone (deterministic cuDNN against tuned);
- the decode stages of a batch through the pipeline (`stage_profile`): per token, wall time against the
  device's busy time, kernels launched, the costliest kernels and host ops (what the captured step leaves);
- the decode step: milliseconds per semantic step at batch 1 and 16 for the CUDA backend, plain torch and
  the CUDA backend with `compile=True`, beside its bandwidth floor (weight bytes over the copy bandwidth
  measured now);
- speed per size and batch: per stage seconds, semantic tokens/s, real-time factor and peak device
  memory, for fastbark (`backend="auto"`: the CUDA backend on CUDA), fastbark on plain torch
  (`fastbark-torch`), with `offload=True` (peak memory with and without it), with `attention="flash"`,
  with `compile=True`, and transformers' `BarkModel`, in half precision on a GPU (float32 on the CPU); for
  the first size also one text with a voice (`fastbark+voice`, `transformers+voice`: every coarse window
  prefilled, as with most real presets).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import batch_texts, history, load_transformers, random_voice  # noqa: E402
from gpu_checks import (agreement, codec_check, fastbark_tokens, fused_check, invariance, parity,  # noqa: E402
                        peak_gb, repeats, reset_peak, sync, timed)

from fastbark.testing import write_random_checkpoint  # noqa: E402


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "device": str(device)}
    for package in ("transformers", "triton"):
        try:
            env[package] = __import__(package).__version__
        except ImportError:
            env[package] = None
    if device.type == "cuda":
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"{type(e).__name__}: {e}"
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gb=p.total_memory / 2**30, compute=f"{p.major}.{p.minor}",
                   flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
                   cudnn_sdp=getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)())
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def copy_bandwidth_gbs(device: torch.device) -> float:
    """The device's copy bandwidth now: bytes read plus written per second, best of 5."""
    x = torch.empty(256 << 20 if device.type == "cuda" else 32 << 20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        _, seconds = timed(lambda: y.copy_(x), device)
        best = min(best, seconds)
    return 2 * x.numel() / best / 1e9


def device_kernels(prof, steps: int, top: int) -> tuple[list, list[dict]]:
    """The device kernels a profile saw, and the `top` costliest by name: per step, how many and their time."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    costliest = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return kernels, [{"kernel": name[:90], "per_step": len(t) / steps, "us_per_step": sum(t) / steps}
                     for name, t in costliest]


def step_profile(folder: Path, device: torch.device, dtype: str, steps: int = 10, fused: bool = False) -> dict:
    """The kernels of one semantic decode step (batch 1, uncaptured: the step the backend chose, or with
    `fused` the fused Triton step with its first tiles), from torch's profiler: per step, how many kernels,
    their summed device time, and the 20 costliest by name. Beside the captured step's time this says
    whether kernels' own work or their count sets it."""
    import fastbark
    from fastbark.backends.cuda.decoder import StaticDecoder
    from torch.profiler import ProfilerActivity, profile
    tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype)
    model = tts.semantic_model
    chosen = model.decoder  # the step the backend chose: its attention, or the fused kernels' tiles
    attention, tiles = getattr(chosen, "attention", "sdpa"), getattr(chosen, "tiles", None)
    if fused:
        from fastbark.backends.cuda.fused import TILES
        tiles = TILES[0]
    decoder = StaticDecoder(model, graphs=False, attention=attention, tiles=tiles)
    token = torch.zeros(1, dtype=torch.long, device=device)
    with torch.inference_mode():
        cache = decoder.new_cache(1, model.config.block_size)
        for pos in range(290, 300):
            decoder.step(token, cache, pos)
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for pos in range(300, 300 + steps):
                decoder.step(token, cache, pos)
            sync(device)
    kernels, top = device_kernels(prof, steps, 20)
    return {"attention": attention, "tiles": tiles and tiles.name, "kernels_per_step": len(kernels) / steps,
            "kernel_us_per_step": sum(e.device_time for e in kernels) / steps, "top": top}


def stage_profile(folder: Path, device: torch.device, dtype: str, batch: int, n_semantic: int = 64) -> dict:
    """Where a batch's decode stages spend their time beyond the captured step: the semantic and coarse stages of
    `batch` texts (sampled, n_semantic tokens each), each run once to warm up (graphs captured), then timed
    alone, then under torch's profiler. Per stage and token: the wall time, the device's busy time (its
    kernels' summed time, from the profiled run), the kernels launched, and the costliest kernels and host
    ops. Wall well above busy means the device waits on the host (Python, launches, reads of the flags)."""
    import fastbark
    from fastbark.options import CoarseOptions, SemanticOptions
    from fastbark.pipeline.coarse import generate_coarse, n_coarse_steps
    from fastbark.pipeline.semantic import generate_semantic
    from torch.profiler import ProfilerActivity, profile
    tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype)
    ids = [tts.tokenize(t) for t in batch_texts(batch)]
    semantic_options = SemanticOptions(temperature=0.7, max_tokens=n_semantic, allow_early_stop=False)
    semantic = generate_semantic(tts.semantic_model, ids, None, semantic_options)
    stages = {"semantic": (lambda: generate_semantic(tts.semantic_model, ids, None, semantic_options), n_semantic),
              "coarse": (lambda: generate_coarse(tts.coarse_model, semantic, None, CoarseOptions(temperature=0.7)),
                         n_coarse_steps(n_semantic))}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {"batch": batch, "semantic_tokens": n_semantic}
    with torch.inference_mode():
        for stage, (run, steps) in stages.items():
            with tts._stage(stage):
                run()  # warm up: graphs captured, kernels compiled
                _, wall = timed(run, device)
                with profile(activities=activities) as prof:
                    run()
                    sync(device)
            kernels, top = device_kernels(prof, steps, 12)
            host = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                          key=lambda e: -e.self_cpu_time_total)[:12]
            out[stage] = {
                "steps": steps, "wall_ms_per_step": wall / steps * 1000,
                "device_busy_ms_per_step": sum(e.device_time for e in kernels) / steps / 1000 if kernels else None,
                "kernels_per_step": len(kernels) / steps, "top_kernels": top,
                "top_host_ops": [{"op": e.key[:90], "per_step": e.count / steps,
                                  "self_us_per_step": e.self_cpu_time_total / steps} for e in host]}
    return out


def decode_step_ms(folder: Path, device: torch.device, dtype: str, batch: int, backend: str,
                   compile: bool = False) -> tuple[float, list[str]]:
    """Milliseconds per semantic decode step at positions 300..427 (attending to 384 keys, then 512), best
    of 3 runs of 128 steps, the prefill excluded; and the backend's measured choices (which step ran)."""
    import fastbark
    from fastbark.pipeline.decoding import decode_one_token, prefill
    from fastbark.pipeline.semantic import semantic_prompt
    tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype, backend=backend, compile=compile)
    model = tts.semantic_model
    ids = [tts.tokenize(t) for t in batch_texts(batch)]
    token = torch.zeros(batch, dtype=torch.long, device=device)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            cache = model.new_cache(batch)
            prefill(model, semantic_prompt(model, ids, None), cache)
            for pos in (300, 427):  # first use of both key lengths timed below: graphs captured, kernels chosen
                decode_one_token(model, token, cache, pos)
            _, seconds = timed(lambda: [decode_one_token(model, token, cache, pos) for pos in range(300, 428)], device)
            best = min(best, seconds / 128 * 1000)
    return best, list(tts.backend.measured)


VOICED = "+voice"  # an engine's name with this suffix: the same engine, every text with one random voice whose
# history fills the coarse stage's (every coarse window prefilled, as with most real presets; bench.py --voice)


def speed(folder: Path, device: torch.device, dtype: str, batch: int, n_semantic: int, engine: str) -> dict:
    texts = batch_texts(batch)
    reset_peak(device)
    # what earlier tasks of this process still hold (cuBLAS workspaces, cached checks): inside every peak below,
    # though not this engine's; RESULTS subtracts it when it explains a peak (offload's, section 42)
    before_load = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    voice = random_voice() if engine.endswith(VOICED) else None
    if engine.startswith("fastbark"):
        import fastbark
        tts, load_s = timed(lambda: fastbark.Bark.from_pretrained(
            folder, device=str(device), dtype=dtype, offload=engine == "fastbark-offload",
            attention="flash" if engine == "fastbark-flash" else "auto",
            backend="torch" if engine == "fastbark-torch" else "auto", compile=engine == "fastbark-compile"),
            device)  # the engine's making: the step choice timed (or read back), Triton's kernels compiled
        _, first_s = timed(lambda: fastbark_tokens(tts, texts, n_semantic, voice), device)  # graphs captured
        load_peak = peak_gb(device)  # the engine's load and first run
        out = fastbark_tokens(tts, texts, n_semantic, voice)  # its stages reset the peak: the greatest is kept below
        out["peak_gb"] = max([load_peak] + list(out["memory"].values())) if load_peak is not None else None
        out["first_run_s"], out["load_s"] = first_s, load_s
        out["backend"] = tts.backend.name
        out["report"] = str(tts.backend)
        n_coarse = sum(c.size for c in out["coarse"])
    else:
        out = run_transformers_on(folder, device, dtype, texts, n_semantic, voice)
        n_coarse = out.pop("n_coarse")
        out["backend"] = out["backend"] if device.type == "cuda" else "transformers"
    total = out["semantic_s"] + out["coarse_s"] + out["fine_s"] + out["codec_s"]
    return dict(engine=engine, backend=out.get("backend", "transformers"), dtype=dtype, batch=batch,
                semantic_s=out["semantic_s"], coarse_s=out["coarse_s"], fine_s=out["fine_s"], codec_s=out["codec_s"],
                total_s=total, semantic_tokens_per_s=batch * n_semantic / out["semantic_s"],
                semantic_ms_per_step=out["semantic_s"] / n_semantic * 1000, coarse_tokens=n_coarse,
                audio_s=out["audio_s"], rtf=out["audio_s"] / total, peak_gb=out.get("peak_gb", peak_gb(device)),
                memory=out.get("memory"), before_load_gb=before_load, load_s=out.get("load_s"),
                first_run_s=out.get("first_run_s"),
                report=out.get("report"))


@torch.no_grad()
def run_transformers_on(folder: Path, device: torch.device, dtype: str, texts: list[str], n_semantic: int,
                        voice=None) -> dict:
    from transformers.models.bark.generation_configuration_bark import (BarkCoarseGenerationConfig,
                                                                         BarkFineGenerationConfig,
                                                                         BarkSemanticGenerationConfig)
    model, tokenizer = load_transformers(folder, dtype)
    model = model.to(device)
    ids = tokenizer(texts, add_special_tokens=False, padding="max_length", max_length=256, return_tensors="pt").to(device)
    s_cfg, c_cfg, f_cfg = BarkSemanticGenerationConfig(), BarkCoarseGenerationConfig(), BarkFineGenerationConfig()
    prompt = history(voice, to_tensor=True)
    prompt = {k: v.to(device) for k, v in prompt.items()} if prompt else None

    def run(n: int):
        sem, t_sem = timed(lambda: model.semantic.generate(
            ids["input_ids"], attention_mask=ids["attention_mask"], semantic_generation_config=s_cfg,
            max_new_tokens=n, min_new_tokens=n, do_sample=False, history_prompt=prompt), device)
        (coarse, lengths), t_coarse = timed(lambda: model.coarse_acoustics.generate(
            sem, semantic_generation_config=s_cfg, coarse_generation_config=c_cfg, codebook_size=1024,
            return_output_lengths=True, do_sample=False, history_prompt=prompt), device)
        fine, t_fine = timed(lambda: model.fine_acoustics.generate(
            coarse, semantic_generation_config=s_cfg, coarse_generation_config=c_cfg, fine_generation_config=f_cfg,
            codebook_size=1024, temperature=1.0, history_prompt=prompt), device)
        audio, t_codec = timed(lambda: model.codec_decode(fine, lengths // 2), device)
        return dict(semantic_s=t_sem, coarse_s=t_coarse, fine_s=t_fine, codec_s=t_codec,
                    n_coarse=int(lengths.sum()), audio_s=sum(a.shape[-1] for a in audio) / 24_000)
    run(4)  # warm-up
    attention = getattr(model.semantic.config, "_attn_implementation", None)  # its best: sdpa where it has it
    return dict(run(n_semantic), backend=f"transformers ({attention})")


def decode_floor(folder: Path, dtype: str, bandwidth_gbs: float) -> dict:
    """One semantic decode step's weight bytes (from the checkpoint's config), and the time reading them takes
    at the measured bandwidth."""
    c = json.loads((folder / "config.json").read_text())["semantic_config"]
    d = c["hidden_size"]  # per layer: attention in (3 d^2) and out (d^2), MLP in and out (4 d^2 each)
    weights = (c["num_layers"] * 12 * d ** 2 + d * c["output_vocab_size"]) * getattr(torch, dtype).itemsize
    return {"weight_mb": weights / 1e6, "floor_ms": weights / (bandwidth_gbs * 1e9) * 1000}


def table(results: dict) -> str:
    lines = ["| size | engine | backend | dtype | batch | semantic s | coarse s | fine s | codec s | total s | "
             "semantic tok/s | RTF | peak GB | load s | first run s |", "| --- " * 15 + "|"]
    for size, rows in results["speed"].items():
        for r in rows:
            if "error" in r:
                lines.append(f"| {size} | {r['engine']} | | {r['dtype']} | {r['batch']} | error: {r['error'][:80]} |"
                             + " |" * 10)
                continue
            peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else ""
            if r.get("before_load_gb"):  # held before this engine loaded (earlier tasks'): part of the peak
                peak += f" ({r['before_load_gb']:.2f} before load)"
            first = f"{r['first_run_s']:.2f}" if r.get("first_run_s") is not None else ""
            load = f"{r['load_s']:.2f}" if r.get("load_s") is not None else ""
            lines.append(f"| {size} | {r['engine']} | {r['backend']} | {r['dtype']} | {r['batch']} | {r['semantic_s']:.2f} "
                         f"| {r['coarse_s']:.2f} | {r['fine_s']:.2f} | {r['codec_s']:.2f} | {r['total_s']:.2f} | "
                         f"{r['semantic_tokens_per_s']:.0f} | {r['rtf']:.2f} | {peak} | {load} | {first} |")
    lines += ["", "| size | decode step | ms | floor ms (weights / copy bandwidth) |", "| --- | --- | --- | --- |"]
    for size, floor in results["floor"].items():
        for key, ms in floor.items():
            if key.endswith("step ms"):
                lines.append(f"| {size} | {key[:-len(' step ms')]} | {ms if ms is None else f'{ms:.3f}'} | "
                             f"{floor.get('floor_ms', float('nan')):.3f} |")
    return "\n".join(lines)


def plan(device: torch.device, sizes: list[str], batches: list[int], engines: list[str]) -> list[tuple]:
    """The measurements in the order they run, the most wanted first (a run cut short by its budget keeps
    those): (kind, size, arguments). On a GPU, for each size in turn: the decode steps, the whole runs of
    fastbark and transformers, offload (and for the first size the fused step's check, the profiles and
    batch invariance); then the first size's float16 / bfloat16 agreement, run-to-run repeats and the
    compiled step; then the rest (the other engines, plain torch's steps, the clone benchmark)."""
    cuda = device.type == "cuda"
    first, tasks = sizes[0], []
    for size in sizes:
        main_engines = [e for e in engines if e in ("fastbark", "transformers")]
        tasks += [("floor", size, None)]
        if size == first and cuda:
            tasks += [("fused", size, None)]
        tasks += [("step", size, ("auto", False, b)) for b in batches]
        if size == first:
            tasks += [("profile", size, None)] + ([("profile-fused", size, None)] if cuda else [])
        tasks += [("speed", size, (e, b)) for b in batches for e in main_engines]
        if size == first:
            tasks += [("invariance", size, None)] + ([("codec", size, None)] if cuda else [])
            tasks += [("stage-profile", size, b) for b in reversed(batches)]  # the largest batch first
        tasks += [("speed", size, (e, batches[0])) for e in engines if e == "fastbark-offload"]
        if size == first:  # one text with a voice: every coarse window prefilled (most real use)
            tasks += [("speed", size, (e + VOICED, batches[0])) for e in main_engines]
    tasks += [("agreement", first, None)] if cuda else []
    tasks += [("repeats", first, None)]
    tasks += [("step", first, ("auto", True, batches[0]))] if cuda else []
    tasks += [("speed", first, (e, batches[0])) for e in engines
              if e in ("fastbark-compile", "fastbark-flash", "fastbark-torch")]
    tasks += [("step", first, ("torch", False, b)) for b in batches]
    for size in sizes:  # the rest
        rest = [("speed", size, (e, b)) for b in batches for e in engines if e not in ("fastbark", "transformers")]
        rest += [("step", size, ("torch", False, b)) for b in batches]
        rest += [("step", size, ("auto", True, b)) for b in batches] if cuda else []
        tasks += [t for t in rest if t not in tasks]
    tasks.append(("clone", None, None))
    return [("doctor", None, None)] + tasks


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="small,large")
    p.add_argument("--tokens", type=int, default=256, help="semantic tokens forced per text")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--engines", help="default: fastbark,fastbark-torch,transformers,fastbark-offload,"
                                     "fastbark-flash,fastbark-compile (on the CPU: fastbark,transformers)")
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="start no new measurement after this many seconds (the rest is listed as skipped)")
    p.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU here")
    half = "float32" if device.type == "cpu" else "float16"
    args.engines = args.engines or ("fastbark,transformers" if device.type == "cpu" else
                                    "fastbark,fastbark-torch,transformers,fastbark-offload,fastbark-flash,"
                                    "fastbark-compile")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(device), "args": vars(args), "speed": {}, "agreement": {}, "floor": {},
               "invariance": {}, "profile": None, "errors": [], "skipped": []}
    results["environment"]["copy_bandwidth_gbs"] = bandwidth = copy_bandwidth_gbs(device)
    print("environment", results["environment"], flush=True)

    def save() -> None:  # after every step: a run cut short by its time limit keeps what it measured
        (out_dir / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
        (out_dir / "gpu.md").write_text(table(results) + "\n")

    def attempt(name: str, fn):
        """fn() or None: a failure is recorded (with the end of its traceback) and the next measurement runs."""
        start = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - another torch or transformers, a CUDA failure: keep the rest
            tail = traceback.format_exc().strip().splitlines()[-6:]
            results["errors"].append({"task": name, "error": f"{type(e).__name__}: {e}"[:400], "where": tail})
            print("ERROR", name, f"{type(e).__name__}: {e}"[:400], *tail, sep="\n  ", flush=True)
            return None
        finally:
            print(f"[{time.perf_counter() - t0:6.1f} s] {name} took {time.perf_counter() - start:.1f} s", flush=True)
            gc.collect()  # the measurement's engines go before the next one's peak memory is read
            if device.type == "cuda":
                torch.cuda.empty_cache()
            save()

    sizes, batches = args.sizes.split(","), [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_random_checkpoint("tiny", Path(tmp) / "tiny")
        results["parity_fp32_device_vs_cpu"] = attempt("parity", lambda: parity(device, tiny))
        print("parity", results["parity_fp32_device_vs_cpu"], flush=True)
        folders = {"tiny": tiny}

        def folder(size: str) -> Path:
            if size not in folders:
                folders[size] = write_random_checkpoint(size, Path(tmp) / size)
            return folders[size]

        for kind, size, a in plan(device, sizes, batches, args.engines.split(",")):
            name = " ".join(str(x) for x in (kind, size, a) if x is not None)
            if time.perf_counter() - t0 > args.budget_s:
                results["skipped"].append(name)
                continue
            if kind == "floor":
                results["floor"][size] = attempt(name, lambda: decode_floor(folder(size), half, bandwidth)) or {}
            elif kind == "step":
                backend, compile, b = a
                key = f"{backend}{'-compile' if compile else ''} batch {b}"
                ms, choices = attempt(name, lambda: decode_step_ms(folder(size), device, half, b, backend, compile)
                                      ) or (None, None)
                results["floor"].setdefault(size, {})[key + " step ms"] = ms
                results["floor"][size][key + " choices"] = choices
            elif kind == "speed":
                engine, b = a
                row = attempt(name, lambda: speed(folder(size), device, half, b, args.tokens, engine))
                row = row or dict(engine=engine, dtype=half, batch=b, error=results["errors"][-1]["error"])
                results["speed"].setdefault(size, []).append(row)
                print(size, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            elif kind == "fused":
                results["fused"] = attempt(name, lambda: fused_check(folder(size), device, half))
                print(size, "fused step", results["fused"], flush=True)
            elif kind == "profile":
                results["profile"] = attempt(name, lambda: step_profile(folder(size), device, half))
                print(size, "step profile", results["profile"], flush=True)
            elif kind == "profile-fused":
                results["profile_fused"] = attempt(name, lambda: step_profile(folder(size), device, half, fused=True))
                print(size, "fused step profile", results["profile_fused"], flush=True)
            elif kind == "stage-profile":
                results.setdefault("stage_profile", {})[f"batch {a}"] = attempt(
                    name, lambda: stage_profile(folder(size), device, half, a))
                print(size, "stage profile", results["stage_profile"][f"batch {a}"], flush=True)
            elif kind == "codec":
                results["codec"] = attempt(name, lambda: codec_check(device, folder(size), half))
                print(size, "codec", results["codec"], flush=True)
            elif kind == "repeats":
                results["repeats"] = attempt(name, lambda: repeats(device, folder(size), half))
                print(size, "repeats", results["repeats"], flush=True)
            elif kind == "invariance":
                results["invariance"][size] = attempt(name, lambda: invariance(device, folder(size), half))
                print(size, "invariance", results["invariance"][size], flush=True)
            elif kind == "agreement":
                results["agreement"][size] = attempt(
                    name, lambda: [agreement(folder(size), device, d, args.tokens) for d in ("float16", "bfloat16")])
                print(size, "agreement", results["agreement"][size], flush=True)
            elif kind == "doctor":  # what `fastbark doctor` says on this machine (tiny models through select())
                def run_doctor():
                    from fastbark.doctor import diagnose
                    return str(diagnose([device.type]))
                results["doctor"] = attempt(name, run_doctor)
                print(results["doctor"], flush=True)
            elif kind == "clone":  # a voice from a 10 s recording (issue 19), float32 (1 s on the CPU)
                def run_clone():
                    import clone
                    long = device.type == "cuda"
                    return clone.main(["--device", str(device), "--seconds", "10" if long else "1",
                                       "--repeats", "3" if long else "1", "--no-reference"])
                results["clone"] = attempt(name, run_clone)
            if kind == "step" or kind == "floor":
                print(size, "decode steps", results["floor"].get(size), flush=True)
    results["environment"]["wall_s"] = time.perf_counter() - t0
    save()
    print(table(results))
    print("skipped:", results["skipped"] or "none", "| errors:", [e["task"] for e in results["errors"]] or "none")
    return results


if __name__ == "__main__":
    main()
