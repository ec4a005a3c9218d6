"""What narration that checks itself costs: the duration check, and Whisper's transcription at the size of
the default recogniser (whisper-base: 6 + 6 layers, 512 wide, a 51,865-token vocabulary) with random
weights (the real ones cannot be downloaded here), decoding a fixed number of tokens per chunk.

    python benchmarks/verify_cost.py --seconds 10 --tokens 40 --threads 2 --json benchmarks/verify-cost.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import best_seconds, cpu_description, report
from fastbark.longform.verify import Verifier
from fastbark.results import Generation

VOCAB_SIZE = 51_865  # whisper-base.en's


def random_whisper(folder: Path, tokens: int, width: int = 512, layers: int = 6) -> Path:
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    while len(vocab) < VOCAB_SIZE - len(specials):
        vocab[f"w{len(vocab)}"] = len(vocab)  # stand-in words: the real vocabulary's size, not its content
    for special in specials:
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=width, encoder_layers=layers,
                           decoder_layers=layers, encoder_attention_heads=8, decoder_attention_heads=8,
                           encoder_ffn_dim=4 * width, decoder_ffn_dim=4 * width, decoder_start_token_id=sot,
                           bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=sot, eos_token_id=None, pad_token_id=eot,
                                               bos_token_id=eot, max_new_tokens=tokens, min_new_tokens=tokens,
                                               is_multilingual=False, no_timestamps_token_id=vocab["<|notimestamps|>"])
    model.save_pretrained(folder)
    return folder


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="audio per chunk")
    p.add_argument("--tokens", type=int, default=40, help="transcript tokens decoded per chunk")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=512, help="d_model (whisper-base: 512)")
    p.add_argument("--layers", type=int, default=6, help="layers each way (whisper-base: 6)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fastbark.longform.asr import WhisperTranscriber
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(int(args.seconds * 24_000)) * 0.1).astype(np.float32)
    chunk = Generation(audio, np.zeros(0, np.int64), np.zeros((2, 0), np.int64), np.zeros((8, 0), np.int64))
    text = " ".join(["word"] * int(args.seconds * 2.7))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        whisper = WhisperTranscriber(str(random_whisper(Path(tmp) / "whisper", args.tokens, args.width, args.layers)))
        for mode in ("duration", "asr"):
            verifier = Verifier(mode, 0.35, 2.5, "en", lambda language: whisper)
            verifier.judge(text, chunk)  # warm up
            best = best_seconds(lambda: verifier.judge(text, chunk), args.repeats)
            rows.append({"verify": mode, "check_s": best, "ms_per_audio_s": best / args.seconds * 1000})
    result = {"seconds": args.seconds, "tokens": args.tokens, "threads": args.threads, "width": args.width,
              "layers": args.layers, "rows": rows,
              "cpu": cpu_description(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    return report(result, ["verify", "one check of a chunk (s)", "ms per second of audio"],
                  lambda r: [r["verify"], f"{r['check_s']:.6f}", f"{r['ms_per_audio_s']:.3f}"], args.json)


if __name__ == "__main__":
    main()
