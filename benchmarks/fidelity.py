"""Fidelity of a fast mode (bfloat16, int8, int4) against float32 on the same weights.

Teacher-forced: both engines read the same tokens (the float32 greedy run), so every step
compares like with like. Reports the largest relative logit error (max |fast - exact| / max
|exact| per step) and how often the greedy choice agrees, for the semantic, coarse and fine stages.

    python benchmarks/fidelity.py --size small --steps 64                  # bfloat16
    python benchmarks/fidelity.py --size small --steps 64 --dtype float32 --quantize int8
    python benchmarks/fidelity.py --size small --steps 64 --dtype float32 --quantize int4
    python benchmarks/fidelity.py --size small --steps 64 --dtype float32 --quantize int8 --cache float32

--cache keeps the semantic and coarse KV caches in float32, bfloat16 or int8 instead of the backend's choice (the
quantised modes' one-call step keeps int8 ones), to measure what a rounded cache costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

CACHES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}



@torch.inference_mode()
def causal_logits(model, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (steps, V) of the prefill and of each decode step fed `tokens` (teacher forcing)."""
    from fastbark.pipeline.decoding import decode_one_token, prefill
    cache = model.new_cache(1)
    out = [prefill(model, embeds, cache)]
    for i, token in enumerate(tokens[:-1]):
        out.append(decode_one_token(model, token.view(1), cache, embeds.shape[1] + i))
    return torch.cat(out).float()


def compare(exact: torch.Tensor, fast: torch.Tensor) -> dict:
    rel = ((fast - exact).abs().amax(-1) / exact.abs().amax(-1)).max().item()
    agree = (fast.argmax(-1) == exact.argmax(-1)).float().mean().item()
    return {"max_rel_logit_error": rel, "greedy_agreement": agree}


def measure(exact, fast, text: str, steps: int) -> dict:
    """exact, fast: two fastbark.Bark engines over the same checkpoint."""
    from fastbark.constants import (COARSE_INFER_TOKEN, COARSE_SEMANTIC_PAD_TOKEN, MAX_COARSE_INPUT,
                                    SEMANTIC_VOCAB_SIZE, SLIDING_WINDOW_LEN)
    from fastbark.pipeline.coarse import CODEBOOK_OFFSETS
    from fastbark.pipeline.semantic import semantic_prompt
    ids = [exact.tokenize(text)]
    semantic = exact.text_to_semantic(text, temperature=0, max_tokens=steps, allow_early_stop=False)
    tokens = torch.from_numpy(semantic)
    results = {}
    logits = [causal_logits(e.semantic_model, semantic_prompt(e.semantic_model, ids, None), tokens)[:, :10_001]
              for e in (exact, fast)]
    results["semantic"] = compare(*logits)

    coarse = exact.semantic_to_coarse(semantic, temperature=0)
    # one window as the coarse stage builds it: semantic context, infer token, then the coarse ids
    context = semantic[:MAX_COARSE_INPUT]
    context = np.pad(context, (0, MAX_COARSE_INPUT - len(context)), constant_values=COARSE_SEMANTIC_PAD_TOKEN)
    flat = torch.from_numpy((coarse + CODEBOOK_OFFSETS).T.reshape(-1)[: min(steps, SLIDING_WINDOW_LEN)])
    prompt = torch.cat([torch.from_numpy(context), torch.tensor([COARSE_INFER_TOKEN])])
    logits = [causal_logits(e.coarse_model, e.coarse_model.input_embeds_layer(prompt)[None], flat)[:, SEMANTIC_VOCAB_SIZE:COARSE_SEMANTIC_PAD_TOKEN]
              for e in (exact, fast)]
    results["coarse"] = compare(*logits)

    fine = exact.coarse_to_fine(coarse, temperature=0)
    window = torch.full((1, 1024, 8), 1024)
    window[0, : fine.shape[1]] = torch.from_numpy(fine.T)[:1024]
    with torch.inference_mode():
        logits = [torch.cat([e.fine_model(window, k)[0, : fine.shape[1], :1024].float() for k in range(2, 8)])
                  for e in (exact, fast)]
    results["fine"] = compare(*logits)
    return results


def main(argv=None) -> dict:
    import fastbark
    from fastbark.testing import write_random_checkpoint
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "small", "large"], default="small")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quantize", choices=["int8", "int4"], help="quantise the GPTs' linear layers")
    p.add_argument("--cache", choices=list(CACHES), help="the KV caches' dtype instead of the backend's choice")
    p.add_argument("--json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(args.size, Path(tmp) / "bark")
        exact = fastbark.Bark.from_pretrained(folder)
        fast = fastbark.Bark.from_pretrained(folder, dtype=args.dtype, quantize=args.quantize)
        caches = {str(m.cache_dtype) for m in (fast.semantic_model, fast.coarse_model)}
        if args.cache:  # the same kernels through the model's seam, the caches in that dtype
            for m in (fast.semantic_model, fast.coarse_model):
                m.use_kernels(m.layers[0].attn.kernel, m.decode_step, m.decoder, CACHES[args.cache])
            caches = {str(CACHES[args.cache])}
        results = measure(exact, fast, "Hello, my dog is cute [laughs]", args.steps)
    mode = args.dtype + (f" + {args.quantize}" if args.quantize else "") + \
        f", KV caches {'/'.join(sorted(caches))} (None: the model's)"
    print(f"\nbark-{args.size} sizes, {mode} against float32, {args.steps} teacher-forced steps")
    print(f"{'stage':<10}{'max rel logit error':>22}{'greedy agreement':>19}")
    for stage, r in results.items():
        print(f"{stage:<10}{r['max_rel_logit_error']:>22.4f}{r['greedy_agreement']:>19.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "dtype": args.dtype, "quantize": args.quantize,
                                               "steps": args.steps, "cache": args.cache,
                                               "kv_caches": sorted(caches),
                                               "stages": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
