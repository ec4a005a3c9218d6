"""Codes -> audio: EnCodec's decoder against Vocos, at their real sizes with random weights, in one run.

Both decode the same random codes (8 codebooks, 75 frames a second) into 24 kHz audio; the table gives
milliseconds per second of audio (best of `--repeats`) and the real-time factor.

    python benchmarks/decoders.py --seconds 10 --threads 2 --json benchmarks/decoders.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import cpu_description
from fastbark.models.encodec import CodecConfig, EncodecDecoder
from fastbark.models.vocos import Vocos, VocosConfig


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    return model.eval()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = int(args.seconds * 75)
    codes = torch.randint(0, 1024, (1, 8, frames))
    decoders = {"encodec": randomised(EncodecDecoder(CodecConfig())), "vocos": randomised(Vocos(VocosConfig()))}
    rows = []
    with torch.inference_mode():
        for name, decoder in decoders.items():
            decoder(codes[:, :, :75])  # warm up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                audio = decoder(codes)
                best = min(best, time.perf_counter() - start)
            seconds = audio.shape[-1] / 24_000
            rows.append({"decoder": name, "parameters_m": sum(p.numel() for p in decoder.parameters()) / 1e6,
                         "audio_s": seconds, "decode_s": best, "ms_per_audio_s": best / seconds * 1000,
                         "rtf": seconds / best})
    result = {"threads": args.threads, "rows": rows, "cpu": cpu_description(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    print("| decoder | parameters | ms per second of audio | real-time factor |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['decoder']} | {r['parameters_m']:.1f} M | {r['ms_per_audio_s']:.1f} | {r['rtf']:.0f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
