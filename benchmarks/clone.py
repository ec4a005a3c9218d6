"""Time to make a voice from a recording, at the real sizes with random weights: HuBERT base (to block 9),
the version-1 quantizer (768 -> 1024 -> 4096 -> 10000) and EnCodec 24 kHz's encoder, on a 10 s clip.

Each part is timed on its own (best of `--repeats`), then the whole `VoiceCloner.clone` from a WAV file
(reading, resampling with soxr, the three models). For comparison, the parts the community tools run:
transformers' HubertModel (all 12 blocks, as they take hidden_states[9] from a full pass) and
EncodecModel.encode(bandwidth=6.0).

    python benchmarks/clone.py --seconds 10 --threads 2 --json benchmarks/clone.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench import best_seconds, cpu_description, randomised, report
from fastbark.clone.cloner import VoiceCloner
from fastbark.clone.quantizer import Quantizer
from fastbark.models.encodec import CodecConfig, EncodecEncoder
from fastbark.models.hubert import Hubert, HubertConfig
from fastbark.testing import REAL_CODEC, REAL_HUBERT


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-reference", action="store_true", help="skip the transformers rows")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    hubert = randomised(Hubert(HubertConfig())).to(device)
    quantizer = randomised(Quantizer(1)).to(device)
    encoder = randomised(EncodecEncoder(CodecConfig())).to(device)
    cloner = VoiceCloner(hubert, encoder, quantizer, device=device, quantizer_name="random V1")
    rate = 44_100
    t = np.arange(int(args.seconds * rate)) / rate
    clip = (0.3 * np.sin(2 * np.pi * (150 + 20 * t) * t)
            + 0.02 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    wave16 = torch.randn(1, int(args.seconds * 16_000), device=device) * 0.1
    wave24 = torch.randn(1, int(args.seconds * 24_000), device=device) * 0.1
    with torch.inference_mode():
        features = hubert(wave16)[0]

    def timed(fn) -> float:
        with torch.inference_mode():
            fn()  # warm up
            sync()
            return best_seconds(lambda: (fn(), sync()), args.repeats)

    rows = [{"engine": "fastbark", "part": "HuBERT base to block 9", "seconds": timed(lambda: hubert(wave16))},
            {"engine": "fastbark", "part": "quantizer V1", "seconds": timed(lambda: quantizer.tokens(features))},
            {"engine": "fastbark", "part": "EnCodec encoder (8 codebooks)", "seconds": timed(lambda: encoder(wave24))}]
    try:
        import soxr  # noqa: F401 - the clone extra (a GPU machine may lack it: the parts are measured anyway)
    except ImportError:
        soxr = None
    if soxr is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "clip.wav"
            sf.write(path, np.stack([clip, clip], 1), rate, subtype="PCM_16")  # 44.1 kHz stereo, as a phone records
            rows.append({"engine": "fastbark", "part": "whole clone from a 44.1 kHz stereo WAV",
                         "seconds": timed(lambda: cloner.clone(path))})
    if not args.no_reference:
        from transformers import EncodecConfig, EncodecModel, HubertConfig as HFHubertConfig, HubertModel
        reference_hubert = randomised(HubertModel(HFHubertConfig(**REAL_HUBERT))).to(device)
        reference_codec = randomised(EncodecModel(EncodecConfig(**REAL_CODEC))).to(device)
        rows.append({"engine": "transformers", "part": "HubertModel, hidden_states[9] of a full pass",
                     "seconds": timed(lambda: reference_hubert(wave16, output_hidden_states=True))})
        rows.append({"engine": "transformers", "part": "EncodecModel.encode(bandwidth=6.0)",
                     "seconds": timed(lambda: reference_codec.encode(wave24[:, None], bandwidth=6.0))})
    for row in rows:
        row["rtf"] = args.seconds / row["seconds"]
    result = {"clip_seconds": args.seconds, "threads": args.threads, "device": str(device), "rows": rows,
              "cpu": cpu_description(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    return report(result, ["engine", "part", f"seconds for {args.seconds:g} s of audio", "x real time"],
                  lambda r: [r["engine"], r["part"], f"{r['seconds']:.3f}", f"{r['rtf']:.1f}x"], args.json)


if __name__ == "__main__":
    main()
