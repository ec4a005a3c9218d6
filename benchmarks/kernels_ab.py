"""The long passes with the AMX kernels of another revision against this tree's, alternating in one process.

native/amx.c (the tiles' products, their quantising of rows and their GELU) and native/attention.c (the tiles'
attention) of a git revision and of the working tree are each built into a library of their own (library.FLAGS,
without the tuning's -D values: both alike), and a fast-mode engine's AMX layers and attention are pointed at one or
the other between runs. Two passes per mode at bark-small sizes (random weights), as routes_ab.py times them: a
coarse prefill of compute_rates.PREFILL_POSITIONS positions and a fine pass over a 1024-frame window; best and median
of the alternating rounds. int4's products take the process's own kernels at each call (int4.py): only its attention
is swapped. On a CPU without AMX there is nothing to swap, and no rows.

    python benchmarks/kernels_ab.py --base a70f4da --threads 2 --modes int8,bfloat16,int4 --json benchmarks/kernels-ab.json
"""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench import cpu_description, model_parser, report
from compute_rates import PREFILL_POSITIONS, engines, pass_inputs
from fastbark.backends.cpu.attention import AmxAttention
from fastbark.backends.cpu.library import FLAGS, NATIVE, _bind_amx, load_kernels
from routes_ab import swap

REPO = Path(__file__).resolve().parent.parent


def build(sources: dict[str, bytes], folder: Path, name: str):
    """The kernels of `sources` (file name -> text of native/*.c and *.h) as AmxKernels."""
    src = folder / name
    src.mkdir()
    for file, text in sources.items():
        (src / file).write_bytes(text)
    out = folder / f"{name}.so"
    subprocess.run(["cc", *FLAGS, *sorted(map(str, src.glob("*.c"))), "-o", str(out), "-lm"], check=True,
                   capture_output=True, timeout=300)
    return _bind_amx(ctypes.CDLL(str(out)))


def sources_at(revision: str) -> dict[str, bytes]:
    """native/*.c and *.h as they were at `revision`."""
    folder = NATIVE.relative_to(REPO).as_posix()
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:{folder}"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{revision}:{folder}/{n}"], cwd=REPO, check=True,
                              capture_output=True).stdout for n in names if n.endswith((".c", ".h"))}


def point_at(models, amx) -> list:
    """Every AMX layer and tile attention of `models` on `amx`'s kernels; returns what points them back."""
    restores = []
    for model in models:
        for m in model.modules():
            if getattr(m, "_amx", None) is not None:
                restores.append(swap(m, _amx=amx))
        for block in model.layers:
            way = getattr(block.attn.kernel, "_whole", None)
            if isinstance(way, AmxAttention):
                restores.append(swap(way, _kernel=amx.attention))
    return restores


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--base", default="HEAD~1", help="the git revision to compare with")
    p.add_argument("--modes", default="int8,bfloat16,int4")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    rows = []
    kernels = load_kernels()
    with tempfile.TemporaryDirectory() as tmp:
        if kernels is not None and kernels.amx is not None and kernels.amx.ready:
            now = {f.name: f.read_bytes() for f in NATIVE.glob("*.[ch]")}
            builds = {"base": build(sources_at(args.base), Path(tmp), "base"), "now": build(now, Path(tmp), "now")}
        else:
            builds = {}
            print("no AMX tiles here: nothing to compare")
        for mode, tts in engines(args) if builds else ():
            codes, embeds = pass_inputs(tts)
            coarse, fine = tts.coarse_model, tts.fine_model
            jobs = {"prefill": lambda: coarse.prefill(embeds, coarse.new_cache(1)), "fine pass": lambda: fine(codes, 2)}
            times = {(b, j): [] for b in builds for j in jobs}
            with torch.inference_mode():
                for r in range(args.rounds + 1):  # the first round warms up, untimed
                    for b, amx in builds.items():
                        restores = point_at((coarse, fine), amx)
                        for j, job in jobs.items():
                            start = time.perf_counter()
                            job()
                            if r:
                                times[(b, j)].append(time.perf_counter() - start)
                        for restore in restores:
                            restore()
            for j in jobs:
                base, now = times[("base", j)], times[("now", j)]
                rows.append({"mode": mode, "pass": j, "base_best_s": min(base),
                             "base_median_s": statistics.median(base), "now_best_s": min(now),
                             "now_median_s": statistics.median(now)})
            del tts
    result = {"size": args.size, "threads": args.threads, "base": args.base, "positions": PREFILL_POSITIONS,
              "rounds": args.rounds, "rows": rows, "cpu": cpu_description(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    return report(result, ["mode", "pass", "base median (best), ms", "now median (best), ms", "median saved"],
                  lambda r: [r["mode"], r["pass"], f"{1e3 * r['base_median_s']:.1f} ({1e3 * r['base_best_s']:.1f})",
                             f"{1e3 * r['now_median_s']:.1f} ({1e3 * r['now_best_s']:.1f})",
                             f"{100 * (1 - r['now_median_s'] / r['base_median_s']):.1f}%"], args.json)


if __name__ == "__main__":
    main()
