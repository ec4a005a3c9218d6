"""Long-form narration: a ~2,000-character text in chunks, fastbark batched vs its own one-by-one loop vs
transformers' sentence loop, on the same random weights, in the same run; and a long text to a file
with its peak memory.

Every chunk is forced to the same number of semantic tokens (greedy, no early stop), so every engine
does the same work. Reports total time and time to first audio (TTFA), and the first chunk alone.

    python benchmarks/longform.py --size small --chunk-tokens 32 --engines fastbark,fastbark-loop,transformers-loop
    python benchmarks/longform.py --size tiny --memory 10000,100000      # peak RSS writing long texts to a file
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastbark.testing import write_random_checkpoint

TEXT = (
    "The lighthouse keeper woke before dawn, as he had every morning for thirty-one years. He climbed the "
    "spiral stairs slowly, counting each of the one hundred and twelve steps. At the top, the great lens "
    "waited, cold and patient. He wiped the glass with a soft cloth, checked the oil, and trimmed the wick. "
    "Outside, the sea was restless. Grey waves broke against the rocks below, throwing spray high into the "
    "air. A fishing boat was making its way back to the harbour, its small engine coughing in the wind. "
    "The keeper raised his hand in greeting, though he knew no one would see it. He thought about his "
    "daughter, who lived in the city now and wrote to him every Sunday. Her letters were full of trains, "
    "crowded streets, and offices with windows that did not open. He read each one twice, then kept them "
    "in a tin box beside his bed. When the sun finally rose, he turned down the lamp and made his tea. "
    "The kettle whistled, the gulls answered, and the day began as it always did. Later, he would walk "
    "along the cliffs and look for the seals that sometimes rested on the lower ledges. In the afternoon "
    "he would repair the fence that the storm had broken, and in the evening he would light the lamp again. "
    "It was a simple life, but it was his, and he would not have traded it for anything in the world. "
    "One winter a storm came that lasted nine days. The windows rattled, the door groaned, and the lamp "
    "burned through the nights without rest. On the sixth night a ship appeared at the edge of the light, "
    "a cargo vessel with a broken mast, drifting towards the reef. The keeper signalled with the lamp, "
    "three long flashes and three short, again and again, until his arms ached. At last the ship turned. "
    "In the spring its captain came to the lighthouse with a bottle of wine and a letter of thanks. The "
    "keeper put the letter in the tin box with the others, and the wine, unopened, on the shelf by the lamp."
)


def greedy(n_tokens: int) -> dict:
    return dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, max_semantic_tokens=n_tokens,
                allow_early_stop=False)


def run_fastbark(folder: Path, text: str, n_tokens: int, loop: bool = False, **engine) -> dict:
    import fastbark
    tts = fastbark.Bark.from_pretrained(folder, **engine)
    options = fastbark.GenerationOptions(**greedy(n_tokens))
    chunks = tts.split(text)
    start = time.perf_counter()
    first = tts.generate(chunks[0], options=options)
    first_alone = time.perf_counter() - start
    start, ttfa, audio = time.perf_counter(), None, 0
    if loop:  # fastbark's own one-by-one loop, with the first chunk as the voice of the rest
        voice = None
        for chunk in chunks:
            out = tts.generate(chunk, voice=voice, options=options)
            voice = voice or out.to_voice()
            ttfa = ttfa or time.perf_counter() - start
            audio += out.duration_s
    else:
        for piece in tts.stream(text, options=options):
            ttfa = ttfa or time.perf_counter() - start
            audio += len(piece.audio) / 24_000
    total = time.perf_counter() - start
    return dict(chunks=len(chunks), total_s=total, ttfa_s=ttfa, first_chunk_alone_s=first_alone,
                first_audio_s=first.duration_s, audio_s=audio)


@torch.no_grad()
def run_transformers(folder: Path, text: str, n_tokens: int, dtype: str = "float32") -> dict:
    """transformers as its users narrate: a loop over the chunks, batch 1 (bench.py's forced-length run)."""
    import fastbark
    from bench import load_transformers, run_transformers as one
    chunks = fastbark.Bark.from_pretrained(folder).split(text)
    loaded = load_transformers(folder, dtype)
    start, ttfa, audio = time.perf_counter(), None, 0
    for chunk in chunks:
        row = one(folder, [chunk], n_tokens, dtype, loaded=loaded)
        ttfa = ttfa or time.perf_counter() - start
        audio += row["audio_s"]
    return dict(chunks=len(chunks), total_s=time.perf_counter() - start, ttfa_s=ttfa, audio_s=audio)


def peak_rss_writing(folder: Path, n_chars: int, n_tokens: int) -> float:
    """Peak RSS (MB) of a fresh `fastbark say` that narrates n_chars of text into a WAV file."""
    reps = n_chars // len(TEXT) + 1
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text((TEXT + "\n") * reps)
        code = ("import sys, resource; from fastbark.cli import main; "
                f"rc = main(['say', '--file', {str(text)!r}, '--model', {str(folder)!r}, '-o', "
                f"{str(Path(tmp) / 'out.wav')!r}, '-q', '--semantic-temperature', '0', '--coarse-temperature', '0', "
                f"'--fine-temperature', '0', '--max-semantic-tokens', '{n_tokens}', '--no-allow-early-stop']); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1]) / 1024  # kB -> MB


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--chunk-tokens", type=int, default=32, help="semantic tokens forced per chunk")
    p.add_argument("--engines", default="fastbark,fastbark-loop,transformers-loop",
                   help="comma list of fastbark, fastbark-bf16, fastbark-int8, fastbark-loop, transformers-loop")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--memory", help="comma list of text lengths (characters) to narrate to a file, measuring peak RSS")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"size": args.size, "chunk_tokens": args.chunk_tokens, "threads": args.threads, "text_chars": len(TEXT),
               "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
               "date": time.strftime("%Y-%m-%d"), "engines": {}, "memory": {}}
    runners = {"fastbark": lambda f: run_fastbark(f, TEXT, args.chunk_tokens),
               "fastbark-bf16": lambda f: run_fastbark(f, TEXT, args.chunk_tokens, dtype="bfloat16"),
               "fastbark-int8": lambda f: run_fastbark(f, TEXT, args.chunk_tokens, quantize="int8"),
               "fastbark-loop": lambda f: run_fastbark(f, TEXT, args.chunk_tokens, loop=True),
               "transformers-loop": lambda f: run_transformers(f, TEXT, args.chunk_tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(args.size, Path(tmp) / "bark")
        if args.memory:
            for n in map(int, args.memory.split(",")):
                results["memory"][n] = peak_rss_writing(folder, n, args.chunk_tokens)
                print(f"narrating {n} characters to a file: peak RSS {results['memory'][n]:.0f} MB")
        for name in filter(None, (args.engines if not args.memory else "").split(",")):
            results["engines"][name] = runners[name](folder)
            print(name, {k: round(v, 2) for k, v in results["engines"][name].items()}, flush=True)
    base = results["engines"].get("transformers-loop")
    if results["engines"]:
        print(f"\nbark-{args.size}, {len(TEXT)} characters, {args.chunk_tokens} semantic tokens per chunk, "
              f"{args.threads} threads")
        print(f"{'engine':<20}{'chunks':>7}{'total s':>9}{'TTFA s':>8}{'first alone s':>15}{'vs transformers':>17}")
        for name, r in results["engines"].items():
            ratio = base["total_s"] / r["total_s"] if base else float("nan")
            print(f"{name:<20}{r['chunks']:>7}{r['total_s']:>9.1f}{r['ttfa_s']:>8.1f}"
                  f"{r.get('first_chunk_alone_s', float('nan')):>15.1f}{ratio:>16.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
