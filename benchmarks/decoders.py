"""Codes -> audio: EnCodec's decoder against Vocos, at their real sizes with random weights, in one run.

Both decode the same random codes (8 codebooks, 75 frames a second) into 24 kHz audio; the table gives
milliseconds per second of audio (best of `--repeats`) and the real-time factor.

    python benchmarks/decoders.py --seconds 10 --threads 2 --json benchmarks/decoders.json
"""

from __future__ import annotations

import argparse
import time

import torch

from bench import best_seconds, cpu_description, randomised, report
from fastbark.models.encodec import CodecConfig, EncodecDecoder
from fastbark.models.vocos import Vocos, VocosConfig


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
            best = best_seconds(lambda: decoder(codes), args.repeats)
            audio = decoder(codes)
            seconds = audio.shape[-1] / 24_000
            rows.append({"decoder": name, "parameters_m": sum(p.numel() for p in decoder.parameters()) / 1e6,
                         "audio_s": seconds, "decode_s": best, "ms_per_audio_s": best / seconds * 1000,
                         "rtf": seconds / best})
    result = {"threads": args.threads, "rows": rows, "cpu": cpu_description(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    return report(result, ["decoder", "parameters", "ms per second of audio", "real-time factor"],
                  lambda r: [r["decoder"], f"{r['parameters_m']:.1f} M", f"{r['ms_per_audio_s']:.1f}",
                             f"{r['rtf']:.0f}x"], args.json)


if __name__ == "__main__":
    main()
