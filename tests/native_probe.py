"""Build fastbark's C kernels for one named CPU class (`-march=MARCH` in place of -march=native), then run every
self-check the library, int8.py, int4.py, decode_step.py and attention.py make at first use, and a tiny engine in
each mode on those kernels. Prints one JSON line. Run in its own process by test_native_targets.py: a build for a
CPU class this machine cannot run dies of SIGILL, and the module-level caches start empty.

    python tests/native_probe.py MARCH HUB_DIR
"""

import json
import sys

import numpy as np
import torch

import fastbark
from fastbark.backends.cpu import library


def main(march: str, hub: str) -> dict:
    library.FLAGS = [f"-march={march}" if f == "-march=native" else f for f in library.FLAGS]
    # built with the tuning knobs' defaults: timing every candidate build is minutes for a -march=x86-64 build (its
    # scalar loops), and the candidates' bits are tested on their own (test_tuning.py, test_native_targets.py)
    library.tune = lambda build, cache: ({}, ())
    kernels = library.load_kernels()
    result = {"f32": kernels is not None, "why": library.kernels_unavailable()}
    print(json.dumps({"built": result["f32"]}), flush=True)  # before any kernel has run: the build itself
    if kernels is None:
        return result
    from fastbark.backends.cpu.attention import bf16_attention
    from fastbark.backends.cpu.decode_step import BF16, F32, INT4, INT8, decode_step_works
    from fastbark.backends.cpu.int4 import int4_kernel
    from fastbark.backends.cpu.int8 import int8_kernels
    result.update(has_bf16=kernels.has_bf16, int8=int8_kernels() is not None, int4=int4_kernel() is not None,
                  step_f32=decode_step_works(F32), step_int8=decode_step_works(INT8), step_int4=decode_step_works(INT4),
                  step_bf16=decode_step_works(BF16))
    if kernels.has_bf16:
        result.update(attention_bf16=bf16_attention() is not None)
    greedy = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, min_eos_p=None,
                  max_semantic_tokens=40)
    texts = ["the dog is cute", "café naïve"]
    for mode in ("float32", "int8", "int4"):
        tts = fastbark.Bark.from_pretrained(hub, cpu_kernel="c", **({} if mode == "float32" else {"quantize": mode}))
        batch = tts.generate(texts, **greedy)
        alone = [tts.generate(text, **greedy) for text in texts]
        result[f"engine_{mode}"] = {
            "decode_steps": sorted({tts.backend.models[m].decode_step for m in ("semantic", "coarse")}),
            "fallbacks": list(tts.backend.fallbacks),
            "finite": all(bool(np.isfinite(g.audio).all()) and g.audio.size > 0 for g in batch),
            "batch_equals_alone": all(np.array_equal(b.fine_tokens, a.fine_tokens) for b, a in zip(batch, alone)),
        }
    return result


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps(main(sys.argv[1], sys.argv[2])), flush=True)
