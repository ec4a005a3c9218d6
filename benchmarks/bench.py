"""Benchmark fastbark against transformers' Bark on the same random weights, in the same run.

Random weights at the real sizes (bark-small, bark) or tiny (a smoke run). A fixed number of
semantic tokens is forced (no early stop) so that every engine does the same work. Prints a
table and writes JSON.

    python benchmarks/bench.py --size small --semantic-tokens 128 --threads 2 --json benchmarks/small-128.json
    python benchmarks/bench.py --size small --batch 4 ...        # 4 different texts as one batch
    python benchmarks/bench.py --size small --memory ...         # peak RSS of loading, per engine
    python benchmarks/bench.py --size small --voice ...          # with a random voice (every engine gets it)

With a voice whose history fills the coarse stage's (209 semantic tokens, 315 frames; the random voice holds 300
and 450, as real presets of 6 s or more do), every coarse window is prefilled afresh, as in most real use;
without one, fastbark carries the KV cache across most windows (RESULTS.md section 26), which the reference
never does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastbark.backends.cpu.choice import cpu_identity
from fastbark.testing import SIZES, write_random_checkpoint



def cpu_description() -> str:
    """The CPU's model name and its vector and matrix extensions, as RESULTS.md rows name them."""
    name, flag_line = cpu_identity()
    flags = flag_line.split()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "asimddp", "sve", "i8mm")
    return f"{name or platform.machine()} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'}; " \
           f"{os.cpu_count()} cores seen)"


def model_parser(doc: str, threads: int = 2) -> argparse.ArgumentParser:
    """A benchmark's options over one model size: --size, --threads and --json; the caller adds its own."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--json", help="write the results here")
    return p


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` runs of fn(), in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with random weights (normal, std 0.02) in eval mode: real sizes, for timing only."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    return model.eval()


def report(result: dict, header: list[str], cells, json_path: str | None) -> dict:
    """Print `result["rows"]` as a markdown table (`cells(row)` -> its cells) and write `result` as JSON."""
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in result["rows"]:
        print("| " + " | ".join(cells(row)) + " |")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def weight_read_ms(model: torch.nn.Module, repeats: int = 5) -> float:
    """The weight-reading floor of one decode step, measured now: the time to read (sum) a float32 copy of
    every matrix the step multiplies by (the linear layers; embeddings are only indexed)."""
    sizes = [m.in_features * m.out_features for m in model.modules() if hasattr(m, "in_features")]
    copies = [torch.randn(n) for n in sizes]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for c in copies:
            c.sum()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


TEXTS = ["Hello, my dog is cute [laughs]", "I am a hobbyist on a laptop.", "The weather is nice today.",
         "Bark turns text into speech."]


def batch_texts(n: int) -> list[str]:
    return [TEXTS[i % len(TEXTS)] for i in range(n)]


def random_voice():
    """A random voice with a full history (300 semantic tokens, 450 frames), as fastbark's Voice."""
    from fastbark.testing import random_voice as arrays
    from fastbark.voices import Voice
    return Voice.from_dict(arrays(np.random.default_rng(0)))


def history(voice, to_tensor: bool) -> dict | None:
    """A voice as the reference engines take it (history_prompt): its three arrays, as torch tensors or numpy."""
    if voice is None:
        return None
    arrays = {k: np.asarray(getattr(voice, k)) for k in ("semantic_prompt", "coarse_prompt", "fine_prompt")}
    return {k: torch.from_numpy(v) for k, v in arrays.items()} if to_tensor else arrays


def run_fastbark(folder: Path, texts: list[str], n_semantic: int, dtype: str, voice=None, **engine_options) -> dict:
    import fastbark
    from fastbark.options import CoarseOptions, FineOptions, SemanticOptions
    from fastbark.pipeline.coarse import generate_coarse
    from fastbark.pipeline.fine import generate_fine
    from fastbark.pipeline.semantic import generate_semantic
    tts = fastbark.Bark.from_pretrained(folder, dtype=dtype, **engine_options)
    ids = [tts.tokenize(t) for t in texts]
    sem, t_sem = timed(lambda: generate_semantic(
        tts.semantic_model, ids, voice, SemanticOptions(temperature=0, max_tokens=n_semantic, allow_early_stop=False)))
    coarse, t_coarse = timed(lambda: generate_coarse(tts.coarse_model, sem, voice, CoarseOptions(temperature=0)))
    fine, t_fine = timed(lambda: generate_fine(tts.fine_model, coarse, voice, FineOptions(temperature=0)))
    audio, t_codec = timed(lambda: [tts.decode(f) for f in fine])
    # the semantic prefill alone, to report the steady decode step (the weight-reading floor's measure)
    from fastbark.pipeline.decoding import prefill
    from fastbark.pipeline.semantic import semantic_prompt
    model = tts.semantic_model
    _, t_prefill = timed(lambda: prefill(model, semantic_prompt(model, ids, voice), model.new_cache(len(ids))))
    return dict(semantic_decode_ms=(t_sem - t_prefill) / (n_semantic - 1) * 1000,
                weight_read_ms=weight_read_ms(model),
                semantic_s=t_sem, coarse_s=t_coarse, fine_s=t_fine, codec_s=t_codec,
                n_semantic=sum(len(s) for s in sem), n_coarse=sum(c.size for c in coarse),
                audio_s=sum(len(a) for a in audio) / 24_000)


def load_transformers(folder: Path, dtype: str, int8: bool = False):
    """transformers' BarkModel and its BERT tokenizer, set up as the run below uses them."""
    from transformers import BarkModel, BertTokenizer, GenerationConfig
    model = BarkModel.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    model.codec_model.float()  # as in fastbark: the codec runs in float32
    if int8:  # torch's own int8 dynamic quantisation of the three GPTs' linear layers
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in torch 2.13
            from torch.ao.quantization import quantize_dynamic
            for name in ("semantic", "coarse_acoustics", "fine_acoustics"):
                setattr(model, name, quantize_dynamic(getattr(model, name), {torch.nn.Linear}, dtype=torch.qint8))
    model.generation_config = GenerationConfig(semantic_config={}, coarse_acoustics_config={},
                                               fine_acoustics_config={}, codebook_size=1024)
    return model, BertTokenizer.from_pretrained(folder, do_lower_case=False)


@torch.no_grad()
def run_transformers(folder: Path, texts: list[str], n_semantic: int, dtype: str, int8: bool = False,
                     loaded=None, voice=None) -> dict:
    from transformers.models.bark.generation_configuration_bark import (BarkCoarseGenerationConfig,
                                                                         BarkFineGenerationConfig,
                                                                         BarkSemanticGenerationConfig)
    model, tokenizer = loaded or load_transformers(folder, dtype, int8)
    ids = tokenizer(texts, add_special_tokens=False, padding="max_length", max_length=256, return_tensors="pt")
    s_cfg, c_cfg = BarkSemanticGenerationConfig(), BarkCoarseGenerationConfig()
    f_cfg = BarkFineGenerationConfig()
    prompt = history(voice, to_tensor=True)
    sem, t_sem = timed(lambda: model.semantic.generate(
        ids["input_ids"], attention_mask=ids["attention_mask"], semantic_generation_config=s_cfg,
        max_new_tokens=n_semantic, min_new_tokens=n_semantic, history_prompt=prompt))  # min = max: no early stop
    (coarse, lengths), t_coarse = timed(lambda: model.coarse_acoustics.generate(
        sem, semantic_generation_config=s_cfg, coarse_generation_config=c_cfg, codebook_size=1024,
        return_output_lengths=True, history_prompt=prompt))
    fine, t_fine = timed(lambda: model.fine_acoustics.generate(
        coarse, semantic_generation_config=s_cfg, coarse_generation_config=c_cfg, fine_generation_config=f_cfg,
        codebook_size=1024, temperature=1.0, history_prompt=prompt))
    audio, t_codec = timed(lambda: model.codec_decode(fine, lengths // 2))
    return dict(semantic_s=t_sem, coarse_s=t_coarse, fine_s=t_fine, codec_s=t_codec,
                n_semantic=int((sem != 10_000).sum()), n_coarse=int(lengths.sum()),
                audio_s=sum(a.shape[-1] for a in audio) / 24_000)


def suno_models(folder: Path) -> dict:
    """Suno's original GPTs (package `bark`) holding the same random weights, keyed as its `models` cache."""
    from bark.model import GPT, GPTConfig
    from bark.model_fine import FineGPT, FineGPTConfig
    from fastbark.testing import _suno_key
    from encodec import EncodecModel
    from transformers import BarkModel, BertTokenizer
    reference = BarkModel.from_pretrained(folder)
    models = {}
    for key, sub, cls, config_cls in (("text", reference.semantic, GPT, GPTConfig),
                                      ("coarse", reference.coarse_acoustics, GPT, GPTConfig),
                                      ("fine", reference.fine_acoustics, FineGPT, FineGPTConfig)):
        c = sub.config
        model = cls(config_cls(n_layer=c.num_layers, n_head=c.num_heads, n_embd=c.hidden_size, block_size=c.block_size,
                               bias=c.bias, dropout=0.0, input_vocab_size=c.input_vocab_size,
                               output_vocab_size=c.output_vocab_size))
        state = {_suno_key(k).removeprefix("_orig_mod."): v for k, v in sub.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # only the causal masks may differ (a buffer that either side builds for itself)
        assert all(k.endswith(".attn.bias") for k in missing + unexpected), (missing, unexpected)
        models[key] = model.eval()
    models["text"] = {"model": models["text"], "tokenizer": BertTokenizer.from_pretrained(folder, do_lower_case=False)}
    # EnCodec at its real 24 kHz size, randomly initialised (Suno's code would download the pretrained one)
    models["codec"] = EncodecModel.encodec_model_24khz(pretrained=False).eval()
    return models


def run_suno(folder: Path, texts: list[str], n_semantic: int, dtype: str, voice=None) -> dict:
    """Suno's original code (`pip install bark`), with its KV cache turned on (its fastest CPU setting).

    It has no batching, so a batch is a loop; it always samples (temperature 0 would divide by zero),
    which does not change the work: the token counts are fixed."""
    if dtype != "float32":
        raise SystemExit("the suno engine runs in float32 only (its bfloat16 autocast is CUDA-only)")
    try:
        import torchaudio  # noqa: F401
    except ImportError:  # encodec imports it for its file helpers only; decoding never calls it
        import types
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import bark.generation as suno
    suno.models.update(suno_models(folder))
    # its loop stops once the generated duration exceeds this: exactly n_semantic tokens
    duration = (n_semantic - 0.5) / suno.SEMANTIC_RATE_HZ
    prompt = history(voice, to_tensor=False)
    sem, t_sem = timed(lambda: [suno.generate_text_semantic(
        t, history_prompt=prompt, silent=True, allow_early_stop=False, max_gen_duration_s=duration,
        use_kv_caching=True) for t in texts])
    coarse, t_coarse = timed(lambda: [suno.generate_coarse(s, history_prompt=prompt, silent=True, use_kv_caching=True)
                                      for s in sem])
    fine, t_fine = timed(lambda: [suno.generate_fine(c, history_prompt=prompt, silent=True) for c in coarse])
    audio, t_codec = timed(lambda: [suno.codec_decode(f) for f in fine])
    return dict(semantic_s=t_sem, coarse_s=t_coarse, fine_s=t_fine, codec_s=t_codec,
                n_semantic=sum(len(s) for s in sem), n_coarse=sum(c.size for c in coarse),
                audio_s=sum(len(a) for a in audio) / 24_000)


LOADERS = {
    "fastbark": "import fastbark; fastbark.Bark.from_pretrained(r'{folder}', dtype='{dtype}')",
    "fastbark-int8": "import fastbark; fastbark.Bark.from_pretrained(r'{folder}', dtype='{dtype}', quantize='int8')",
    "fastbark-int4": "import fastbark; fastbark.Bark.from_pretrained(r'{folder}', dtype='{dtype}', quantize='int4')",
    "transformers": "import torch, transformers; transformers.BarkModel.from_pretrained(r'{folder}', dtype=torch.{dtype})",
}


def load_rss_mb(engine: str, folder: Path, dtype: str) -> dict:
    """Peak RSS of a fresh process that loads the checkpoint, minus that of one that only imports.

    The peak is VmHWM from /proc (reset at exec); ru_maxrss would carry this process's own peak over."""
    def peak(code: str) -> float:
        probe = (f"{code}\nimport re; print(re.search(r'VmHWM:\\s+(\\d+)', "
                 f"open('/proc/self/status').read()).group(1))")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1]) / 1024  # kB -> MB
    code = LOADERS[engine].format(folder=folder, dtype=dtype)
    imports = code.split(";")[0] + ("; import torch" if engine.startswith("fastbark") else "")
    full, base = peak(code), peak(imports)
    return dict(peak_rss_mb=full, import_rss_mb=base, load_rss_mb=full - base)


def summarise(row: dict) -> dict:
    row["total_s"] = row["semantic_s"] + row["coarse_s"] + row["fine_s"] + row["codec_s"]
    row["semantic_tok_s"] = row["n_semantic"] / row["semantic_s"]
    row["coarse_tok_s"] = row["n_coarse"] / row["coarse_s"]
    row["rtf"] = row["audio_s"] / row["total_s"]  # audio seconds per compute second (for a batch: aggregate)
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--semantic-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--engines", default="fastbark,transformers",
                   help="comma list of fastbark, fastbark-unpacked (plain F.linear), fastbark-onednn (oneDNN-packed "
                        "decode layers instead of the C kernel), fastbark-int8 (int8 linear layers), fastbark-int4 "
                        "(int4 weights in groups of 32), transformers, transformers-float32 (the reference in float32 "
                        "whatever --dtype is), transformers-int8 (the reference under torch.ao dynamic int8), suno (Suno's "
                        "original code, when `bark` is installed)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=1, help="texts generated together")
    p.add_argument("--voice", action="store_true",
                   help="a random voice with a full history, for every engine: every coarse window is then "
                        "prefilled, as with most real voices")
    p.add_argument("--memory", action="store_true", help="measure the peak RSS of loading instead of speed")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = batch_texts(args.batch)
    results = {"size": args.size, "semantic_tokens": args.semantic_tokens, "threads": args.threads,
               "dtype": args.dtype, "batch": args.batch, "voice": args.voice,
               "torch": torch.__version__, "cpu": cpu_description(),
               "date": time.strftime("%Y-%m-%d"), "engines": {}}
    unpacked = lambda *a, **k: run_fastbark(*a, cpu_kernel="plain", **k)  # noqa: E731  (ablation: plain F.linear)
    onednn = lambda *a, **k: run_fastbark(*a, cpu_kernel="onednn", **k)  # noqa: E731  (ablation: oneDNN, no C kernel)
    int8 = lambda *a, **k: run_fastbark(*a, quantize="int8", **k)  # noqa: E731
    int4 = lambda *a, **k: run_fastbark(*a, quantize="int4", **k)  # noqa: E731
    runners = {"fastbark": (run_fastbark, args.dtype), "fastbark-unpacked": (unpacked, args.dtype),
               "fastbark-onednn": (onednn, args.dtype),
               "fastbark-int8": (int8, args.dtype), "fastbark-int4": (int4, args.dtype),
               "transformers": (run_transformers, args.dtype),
               "transformers-float32": (run_transformers, "float32"),
               "transformers-int8": (lambda *a, **k: run_transformers(*a, int8=True, **k), args.dtype),
               "suno": (run_suno, args.dtype)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(args.size, Path(tmp) / "bark")
        if args.memory:
            for name in args.engines.split(","):
                results["engines"][name] = load_rss_mb(name if name in LOADERS else name.split("-")[0],
                                                       folder, args.dtype)
                print(f"{name:<21} loading bark-{args.size} in {args.dtype}: peak RSS "
                      f"{results['engines'][name]['peak_rss_mb']:.0f} MB, of which loading "
                      f"{results['engines'][name]['load_rss_mb']:.0f} MB")
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
            return results
        voice = random_voice() if args.voice else None
        for name in args.engines.split(","):
            runner, dtype = runners[name]
            results["engines"][name] = summarise(runner(folder, texts, args.semantic_tokens, dtype, voice=voice))
    engines = results["engines"]
    work = {name: (r["n_semantic"], r["n_coarse"]) for name, r in engines.items()}
    if len(set(work.values())) > 1:  # every engine must have done the same work, or the ratios mean nothing
        raise SystemExit(f"engines generated different token counts (semantic, coarse): {work}")
    base = engines.get("transformers-float32") or engines.get("transformers")
    print(f"\nbark-{args.size} sizes, {args.dtype}, batch {args.batch}, {args.semantic_tokens} semantic tokens, "
          f"{'a random voice' if args.voice else 'no voice'}, "
          f"{args.threads} threads, "
          f"torch {torch.__version__}; speed-up against {'transformers-float32' if 'transformers-float32' in engines else 'transformers'}")
    print(f"{'engine':<21}{'semantic s':>11}{'tok/s':>8}{'coarse s':>10}{'tok/s':>8}{'fine s':>8}"
          f"{'codec s':>9}{'total s':>9}{'RTF':>7}{'speed-up':>10}{'samples/s':>11}")
    for name, r in results["engines"].items():
        ratio = base["total_s"] / r["total_s"] if base else float("nan")
        if "semantic_decode_ms" in r:
            print(f"({name}: semantic decode step {r['semantic_decode_ms']:.1f} ms after a "
                  f"{r['semantic_s'] - r['semantic_decode_ms'] * (args.semantic_tokens - 1) / 1000:.2f} s prefill; "
                  f"reading its float32 weights once takes {r['weight_read_ms']:.1f} ms now: "
                  f"{r['semantic_decode_ms'] / r['weight_read_ms']:.2f}x that floor)")
        r["speedup_vs_transformers"] = ratio
        print(f"{name:<21}{r['semantic_s']:>11.2f}{r['semantic_tok_s']:>8.1f}{r['coarse_s']:>10.2f}"
              f"{r['coarse_tok_s']:>8.1f}{r['fine_s']:>8.2f}{r['codec_s']:>9.2f}{r['total_s']:>9.2f}"
              f"{r['rtf']:>7.3f}{ratio:>9.2f}x{args.batch / r['total_s']:>11.3f}")
        r["samples_per_s"] = args.batch / r["total_s"]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
