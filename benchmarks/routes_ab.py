"""The long passes with this machine's chosen routes against the ones before them, alternating in one process.

Two passes per fast mode at bark-small sizes (random weights): a coarse prefill of compute_rates.PREFILL_POSITIONS
positions into a fresh cache, and a fine pass over a 1024-frame window. Each is timed as the backend made it
("chosen") and with one of these undone ("before"), in alternating rounds, best of each:

- prefills: the decode stages' long products as before they could take the AMX tiles over their plain weights
  (int8: torch._int_mm with the C rounding and rescaling; bfloat16: F.linear; int4: oneDNN's float32 GEMMs);
- gelu: the MLP's GELU as its own torch op after the first product, instead of in that product's pass;
- cache: an int8 KV cache rounded by models/quantize.py's torch code instead of the C one (the prefill only).

    python benchmarks/routes_ab.py --threads 2 --modes int8,bfloat16,int4 --json benchmarks/routes-ab-spr.json
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from bench import best_seconds, cpu_description, model_parser, report
from compute_rates import PREFILL_POSITIONS, engines, pass_inputs
from fastbark.backends.cpu import amx as tiles
from fastbark.backends.cpu.int4 import Int4Linear
from fastbark.backends.cpu.int8 import Int8Linear
from fastbark.models import gpt


def swap(module, **attributes) -> Callable[[], None]:
    """Set attributes of `module`; returns what sets them back (deleting those it did not have)."""
    before = {name: module.__dict__.get(name, swap) for name in attributes}  # swap itself: "had none"
    for name, value in attributes.items():
        setattr(module, name, value)

    def restore():
        for name, value in before.items():
            delattr(module, name) if value is swap else setattr(module, name, value)
    return restore


def undo_prefill_routes(model) -> list[Callable[[], None]]:
    """Set the decode stage's tiles routes back to the ones before them; returns what redoes them."""
    restores = []
    for m in model.modules():
        if isinstance(m, Int8Linear) and m.route == "amx-plain":
            restores.append(swap(m, route="int_mm", _amx=None))
        elif isinstance(m, Int4Linear) and m.long_route == "amx":
            restores.append(swap(m, long_route="float32"))
        elif isinstance(m, tiles.AmxBf16Linear):
            restores.append(swap(m, forward=lambda x, m=m: F.linear(x, m.weight, m.bias),
                                 forward_gelu=lambda x, m=m: F.gelu(F.linear(x, m.weight, m.bias))))
    return restores


def unfused(self, x):
    return self.out_proj(F.gelu(self.in_proj(x)))


def ab(job, before, after, rounds: int) -> tuple[float, float]:
    """Best seconds of job() with before() applied, and after after(), alternating."""
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for _ in range(rounds):
            for i, setup in enumerate((before, after)):
                setup()
                job()
                best[i] = min(best[i], best_seconds(job, 2))
    return best[0], best[1]


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--modes", default="int8,bfloat16,int4")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    rows = []
    for mode, tts in engines(args):
        coarse, fine = tts.coarse_model, tts.fine_model
        codes, embeds = pass_inputs(tts)

        def prefill():
            coarse.prefill(embeds, coarse.new_cache(1))

        def fine_pass():
            fine(codes, 2)
        fused = gpt.MLP.forward
        changes: list = []

        def undo():
            changes[:] = undo_prefill_routes(coarse)

        def set_mlp(forward):
            return lambda: setattr(gpt.MLP, "forward", forward)

        quantize = coarse.cache_quantize
        cases = [("prefill", "prefills", prefill, undo, lambda: [restore() for restore in changes]),
                 ("prefill", "gelu", prefill, set_mlp(unfused), set_mlp(fused)),
                 ("fine pass", "gelu", fine_pass, set_mlp(unfused), set_mlp(fused))]
        if quantize is not None:
            cases.append(("prefill", "cache", prefill, lambda: setattr(coarse, "cache_quantize", None),
                          lambda: setattr(coarse, "cache_quantize", quantize)))
        try:
            for job_name, what, job, before, after in cases:
                b, a = ab(job, before, after, args.rounds)
                rows.append({"mode": mode, "pass": job_name, "undone": what, "before_s": b, "chosen_s": a})
        finally:
            gpt.MLP.forward = fused
        del tts
    result = {"size": args.size, "threads": args.threads, "positions": PREFILL_POSITIONS, "rows": rows,
              "cpu": cpu_description(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    return report(result, ["mode", "pass", "undone", "before (ms)", "chosen (ms)", "saved"],
                  lambda r: [r["mode"], r["pass"], r["undone"], f"{1e3 * r['before_s']:.1f}", f"{1e3 * r['chosen_s']:.1f}",
                             f"{100 * (1 - r['chosen_s'] / r['before_s']):.0f}%"], args.json)


if __name__ == "__main__":
    main()
