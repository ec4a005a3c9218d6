"""The device script's checks of correctness and repeatability (benchmarks/gpu.py runs them), and the small
device helpers both files use: float32 parity with the CPU, float16 / bfloat16 agreement with float32, the
fused Triton step against the torch step, batch invariance, run-to-run repeats, and the codec alone."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from bench import batch_texts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def fastbark_tokens(tts, texts: list[str], n_semantic: int, voice=None) -> dict:
    """Greedy semantic, coarse and fine tokens of `texts` (a batch, with `voice` for every text), with per-stage
    times; each stage in the engine's stage context (with offload: its model on the device for that stage only).
    On CUDA also the memory: allocated before the run (what the engine keeps between runs), and each stage's
    peak."""
    from fastbark.options import CoarseOptions, FineOptions, SemanticOptions
    from fastbark.pipeline.coarse import generate_coarse
    from fastbark.pipeline.fine import generate_fine
    from fastbark.pipeline.semantic import generate_semantic
    device = tts.device
    ids = [tts.tokenize(t) for t in texts]

    memory = {"kept_gb": torch.cuda.memory_allocated(device) / 2**30} if device.type == "cuda" else {}

    def staged(name: str, fn):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with tts._stage(name) if name != "codec" else contextlib.nullcontext():  # the codec is not offloaded
            out = fn()
        if device.type == "cuda":
            memory[f"{name}_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out
    sem, t_sem = timed(lambda: staged("semantic", lambda: generate_semantic(
        tts.semantic_model, ids, voice, SemanticOptions(temperature=0, max_tokens=n_semantic,
                                                        allow_early_stop=False))), device)
    coarse, t_coarse = timed(lambda: staged("coarse", lambda: generate_coarse(
        tts.coarse_model, sem, voice, CoarseOptions(temperature=0))), device)
    fine, t_fine = timed(lambda: staged("fine", lambda: generate_fine(
        tts.fine_model, coarse, voice, FineOptions(temperature=0))), device)
    audio, t_codec = timed(lambda: staged("codec", lambda: [tts.decode(f) for f in fine]), device)
    return dict(semantic=sem, coarse=coarse, fine=fine, semantic_s=t_sem, coarse_s=t_coarse, fine_s=t_fine,
                codec_s=t_codec, audio_s=sum(len(a) for a in audio) / 24_000, memory=memory)


def codec_check(device: torch.device, folder: Path, dtype: str, runs: int = 5) -> dict:
    """The codec alone on one text's fine codes (8 x 384 frames, 5.1 s): median ms of `runs` decodes as the
    engine runs it (cuDNN held to deterministic algorithms on CUDA), and with cuDNN free to pick and tune
    (`benchmark=True`); whether each way's audio was the same bits every time; and the GPU memory each way
    needed beyond what was allocated before (activations and cuDNN's workspaces: a candidate for what sets
    offload's peak)."""
    import fastbark
    tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype)
    codes = np.random.default_rng(0).integers(0, 1024, (8, 384))
    out = {}
    for way in ("deterministic", "benchmark"):
        audio, times = [], []
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        reset_peak(device)
        for _ in range(runs + 1):  # the first run picks (and with benchmark, tunes) the algorithms
            if way == "deterministic":
                wave, seconds = timed(lambda: tts.decode(codes), device)
            else:
                saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
                try:
                    source = torch.from_numpy(codes).to(device)[None]
                    wave, seconds = timed(lambda: tts.codec(source)[0].float().cpu().numpy(), device)
                finally:
                    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
            audio.append(wave)
            times.append(seconds * 1000)
        peak = peak_gb(device)  # above what was allocated before: the decode's own working memory
        out[way] = {"ms": float(np.median(times[1:])), "same_bits": all(np.array_equal(audio[1], a) for a in audio[2:]),
                    "working_gb": None if peak is None else peak - before / 2**30}
    return out


def repeats(device: torch.device, folder: Path, dtype: str, runs: int = 3) -> dict:
    """Run-to-run determinism: each of 5 sampled, seeded texts alone, `runs` times with the default backend
    and twice with plain torch (run 4, RESULTS section 42, also ran the CUDA backend uncaptured: the same as
    captured). Per configuration: per stage, how many texts gave the same result every time; and where the
    first text that did not first differed (stage, and position in that stage's flattened tokens)."""
    import fastbark
    texts, seeds = batch_texts(5), [101 + i for i in range(5)]
    fields = ("semantic_tokens", "coarse_tokens", "fine_tokens", "audio")
    out = {}
    for config, n in (("auto", runs), ("torch", 2)):
        tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype, backend=config)
        results = [[tts.generate(t, seed=s, max_semantic_tokens=96) for t, s in zip(texts, seeds)]
                   for _ in range(n)]
        same = {f: [all(np.array_equal(getattr(results[0][i], f), getattr(r[i], f)) for r in results[1:])
                    for i in range(len(texts))] for f in fields}
        first = None
        for i in range(len(texts)):
            for f in fields:
                if not same[f][i]:
                    other = next(r[i] for r in results[1:] if not np.array_equal(getattr(results[0][i], f),
                                                                                    getattr(r[i], f)))
                    a, b = np.ravel(getattr(results[0][i], f)), np.ravel(getattr(other, f))
                    n = min(len(a), len(b))
                    where = np.flatnonzero(a[:n] != b[:n])
                    first = {"text": i, "stage": f, "lengths": [len(a), len(b)],
                             "position": int(where[0]) if len(where) else n}
                    break
            if first:
                break
        out[config] = {"backend": str(tts.backend).splitlines()[0],
                       "same_per_stage": {f: sum(v) for f, v in same.items()},
                       "first_difference": first}
        del tts
    return out


def fused_check(folder: Path, device: torch.device, dtype: str) -> dict:
    """The fused Triton step (backends/cuda/fused.py) against the torch step on the real semantic model, a
    random cache of 16 rows at position 500: for each of its tiles, the largest logit difference, whether
    the cache writes agree, and whether row 3 alone (a one-row cache) has the bits it has among 16 rows."""
    import fastbark
    from fastbark.backends.cuda import fused
    from fastbark.backends.cuda.decoder import token_step
    model = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype, backend="torch").semantic_model
    c = model.config
    shape = (c.n_layer, 2, 16, c.n_head, c.block_size, c.n_embd // c.n_head)
    generator = torch.Generator(device).manual_seed(0)
    cache = torch.randn(shape, generator=generator, device=device).to(getattr(torch, dtype))
    token = torch.randint(0, c.input_vocab_size, (16,), generator=generator, device=device)
    pos = torch.tensor([500], device=device)
    out = {"why_not": fused.supports(model)}
    with torch.inference_mode():
        kv = cache.clone()
        want = token_step(model, token, pos, kv, 512).float()
        for tiles in fused.TILES:
            got_kv, alone = cache.clone(), cache[:, :, 3:4].clone()
            got = fused.token_step(model, token, pos, got_kv, tiles)
            one = fused.token_step(model, token[3:4], pos, alone, tiles)
            out[tiles.name] = {"max_logit_diff": (got.float() - want).abs().max().item(),
                               "max_cache_diff": (got_kv.float() - kv.float()).abs().max().item(),
                               "row_alone_equal": bool(torch.equal(got[3], one[0])
                                                       and torch.equal(got_kv[:, :, 3], alone[:, :, 0]))}
    return out


def parity(device: torch.device, folder: Path) -> dict:
    """float32 greedy tokens on `device` (the default backend, and plain torch) against the CPU's plain
    backend, tiny model, a batch of 2, 300 semantic tokens (coarse windows carried and prefilled afresh)."""
    import fastbark
    texts = batch_texts(2)
    cpu = fastbark_tokens(fastbark.Bark.from_pretrained(folder, backend="torch"), texts, 300)
    out = {}
    for backend in ("auto", "torch"):
        tts = fastbark.Bark.from_pretrained(folder, device=str(device), backend=backend)
        dev = fastbark_tokens(tts, texts, 300)
        out[f"{tts.backend.name} report"] = str(tts.backend)
        out[tts.backend.name] = {stage: all(np.array_equal(a, b) for a, b in zip(cpu[stage], dev[stage]))
                                 for stage in ("semantic", "coarse", "fine")}
    return out


def invariance(device: torch.device, folder: Path, dtype: str) -> dict:
    """Sampled and seeded, the default backend in `dtype`: each of 5 texts alone and in one batch, every
    stage's tokens and the audio compared (the server's promise); per stage, how many texts were equal;
    and each text alone a second time, to tell run-to-run nondeterminism from a batch's influence."""
    import fastbark
    tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=dtype)
    texts = batch_texts(5)
    kwargs = dict(seed=[101 + i for i in range(5)], max_semantic_tokens=96)
    together = tts.generate(texts, **kwargs)
    alone = [tts.generate(t, seed=s, max_semantic_tokens=96) for t, s in zip(texts, kwargs["seed"])]
    again = [tts.generate(t, seed=s, max_semantic_tokens=96) for t, s in zip(texts, kwargs["seed"])]
    fields = ("semantic_tokens", "coarse_tokens", "fine_tokens", "audio")

    def equal(xs, ys) -> dict[str, list[bool]]:
        return {f: [bool(np.array_equal(getattr(a, f), getattr(b, f))) for a, b in zip(xs, ys)] for f in fields}
    batched, repeated = equal(together, alone), equal(alone, again)
    return {"backend": tts.backend.name, "dtype": dtype, "texts": len(texts),
            "equal_texts": sum(all(e) for e in zip(*batched.values())),
            "equal_per_stage": {f: sum(e) for f, e in batched.items()},
            # each text alone twice: a difference here is run-to-run nondeterminism, not the batch
            "repeat_equal_per_stage": {f: sum(e) for f, e in repeated.items()}}


def agreement(folder: Path, device: torch.device, dtype: str, n_semantic: int) -> dict:
    """Greedy semantic tokens in `dtype` against float32 on the same device, batch 1."""
    import fastbark
    from fastbark.options import SemanticOptions
    from fastbark.pipeline.semantic import generate_semantic
    options = SemanticOptions(temperature=0, max_tokens=n_semantic, allow_early_stop=False)
    tokens = {}
    for d in ("float32", dtype):
        tts = fastbark.Bark.from_pretrained(folder, device=str(device), dtype=d)
        tokens[d] = generate_semantic(tts.semantic_model, [tts.tokenize(batch_texts(1)[0])], None, options)[0]
        del tts
    a, b = tokens["float32"], tokens[dtype]
    differ = np.flatnonzero(a != b)
    return {"dtype": dtype, "equal_share": float((a == b).mean()),
            "prefix_share": float((differ[0] if len(differ) else len(a)) / len(a))}
