"""The `fastbark` command: `say`, `voices`, `convert`. Bad input exits with status 2 and one clear line."""

from __future__ import annotations

import argparse
import io
import sys
import warnings

from .constants import (DEFAULT_COARSE_TEMPERATURE, DEFAULT_FINE_TEMPERATURE, DEFAULT_MIN_EOS_P,
                        DEFAULT_SEMANTIC_TEMPERATURE, MAX_SEMANTIC_TOKENS)
from .errors import BadInput

DEFAULT_MODEL = "suno/bark-small"


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"hub id, hub-layout folder, or folder of Suno's .pt files (default {DEFAULT_MODEL})")
    p.add_argument("--codec", help="EnCodec for Suno-layout models: a .th file, folder or hub id")
    p.add_argument("--tokenizer", help="tokenizer file, folder or hub id (overrides the checkpoint's)")


def _none_or_float(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastbark", description="Bark text-to-speech, fast and faithful.")
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="speak text into a WAV file")
    say.add_argument("text", nargs="?", help="text to speak ('-' or absent: read standard input)")
    say.add_argument("--file", "-f", help="read the text from this file")
    say.add_argument("-o", "--output", default="out.wav", help="WAV file to write, '-' for standard output")
    _model_args(say)
    say.add_argument("--voice", "-v", help="voice preset name (see `fastbark voices`) or .npz file")
    say.add_argument("--seed", type=int, help="random seed: the same seed gives the same audio")
    say.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    say.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 (default float32)")
    say.add_argument("--quantize", choices=["int8"],
                     help="int8: the fast int8 mode on the CPU (int8 linear layers; see the README for fidelity)")
    say.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core)")
    say.add_argument("--semantic-temperature", type=float, default=DEFAULT_SEMANTIC_TEMPERATURE)
    say.add_argument("--coarse-temperature", type=float, default=DEFAULT_COARSE_TEMPERATURE)
    say.add_argument("--fine-temperature", type=float, default=DEFAULT_FINE_TEMPERATURE)
    say.add_argument("--top-k", type=int, help="semantic and coarse stages")
    say.add_argument("--top-p", type=float, help="semantic and coarse stages")
    say.add_argument("--min-eos-p", type=_none_or_float, default=DEFAULT_MIN_EOS_P,
                     help="stop when p(end of speech) reaches this; 'none' turns it off")
    say.add_argument("--max-semantic-tokens", type=int, default=MAX_SEMANTIC_TOKENS)
    say.add_argument("--save-voice", help="also save the result as a reusable .npz voice")
    say.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    voices = sub.add_parser("voices", help="list the voice presets of a model")
    _model_args(voices)

    convert = sub.add_parser("convert", help="write any accepted checkpoint as a local hub-layout folder")
    convert.add_argument("src", help="hub id, hub-layout folder, or folder of Suno's .pt files")
    convert.add_argument("dst", help="new folder to write")
    convert.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 for the three GPTs")
    convert.add_argument("--codec", help="EnCodec for Suno-layout sources: a .th file, folder or hub id")
    convert.add_argument("--tokenizer", help="tokenizer file, folder or hub id")
    convert.add_argument("--no-voices", action="store_true", help="leave the voice presets out")
    return parser


def read_text(args) -> str:
    if args.file and args.text:
        raise BadInput("give the text either as an argument or with --file, not both")
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise BadInput(f"cannot read text file {args.file!r}: {e.strerror}") from None
    if args.text is not None and args.text != "-":
        return args.text
    if sys.stdin is None or sys.stdin.isatty():
        raise BadInput("no text given: pass TEXT, --file FILE, or pipe text on standard input")
    return sys.stdin.read()


def write_wav(path: str, audio, sample_rate: int) -> None:
    import soundfile as sf
    if path == "-":
        buffer = io.BytesIO()
        sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
    else:
        try:
            sf.write(path, audio, sample_rate, subtype="PCM_16")
        except (sf.LibsndfileError, OSError, TypeError) as e:
            raise BadInput(f"cannot write {path!r}: {e} (the output must be a writable .wav path or '-')") from None


def cmd_say(args) -> None:
    import torch
    from .engine import Bark
    text = read_text(args)
    if args.threads is not None:
        if args.threads < 1:
            raise BadInput(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    tts = Bark.from_pretrained(args.model, device=args.device, dtype=args.dtype, codec=args.codec,
                               tokenizer=args.tokenizer, quantize=args.quantize)
    tts.progress = not args.quiet
    result = tts.generate(text, voice=args.voice, seed=args.seed, semantic_temperature=args.semantic_temperature,
                          coarse_temperature=args.coarse_temperature, fine_temperature=args.fine_temperature,
                          top_k=args.top_k, top_p=args.top_p, min_eos_p=args.min_eos_p,
                          max_semantic_tokens=args.max_semantic_tokens)
    write_wav(args.output, result.audio, result.sample_rate)
    if args.save_voice:
        result.save_voice(args.save_voice)
    if not args.quiet and args.output != "-":
        print(f"wrote {args.output}: {result.duration_s:.2f} s at {result.sample_rate} Hz", file=sys.stderr)


def cmd_voices(args) -> None:
    from .engine import Bark
    names = Bark.from_pretrained(args.model, codec=args.codec, tokenizer=args.tokenizer).voices()
    if not names:
        print(f"{args.model} has no voice presets; pass an .npz voice file to --voice", file=sys.stderr)
    for name in names:
        print(name)


def cmd_convert(args) -> None:
    from .engine import parse_dtype
    from .loading.convert import write_hub_layout
    from .loading.layouts import load_parts
    import torch
    parts = load_parts(args.src, torch.device("cpu"), parse_dtype(args.dtype), tokenizer=args.tokenizer,
                       codec=args.codec)
    dst = write_hub_layout(parts, args.dst, voices=not args.no_voices)
    print(f"wrote {dst}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"fastbark: warning: {msg}\n"
    try:
        {"say": cmd_say, "voices": cmd_voices, "convert": cmd_convert}[args.command](args)
    except BadInput as e:
        print(f"fastbark: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
