"""The `fastbark` command: `say`, `voices`, `convert`. Bad input exits with status 2 and one clear line."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import signal
import sys
import threading
import time
import typing
import warnings

from . import __version__
from .errors import BadInput
from .loading.layouts import DEFAULT_CODEC
from .options import CloneOptions, EngineOptions, GenerationOptions, LongFormOptions
from .output import FORMATS

DEFAULT_MODEL = "suno/bark-small"


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"hub id, hub-layout folder, or folder of Suno's .pt files (default {DEFAULT_MODEL})")
    p.add_argument("--codec", help="EnCodec for Suno-layout models: a .th file, folder or hub id")
    p.add_argument("--tokenizer", help="tokenizer file, folder or hub id (overrides the checkpoint's)")
    p.add_argument("--vocos", help="with --decoder vocos: Vocos's folder or hub id (default "
                                   "charactr/vocos-encodec-24khz)")


def _flag_type(kind):
    """argparse's converter for a field of type `kind` (int, float or str, maybe Optional): 'none' gives None
    for Optional fields."""
    args = typing.get_args(kind)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), kind) if args else kind

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if base is int else 'a number'}"
                                             f"{' or none' if optional else ''}, got {text!r}") from None
    return convert if base in (int, float) else base


def add_option_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the options dataclass `cls`: --field-name, typed, with its default and help."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (see fastbark.{cls.__name__})")
    for f in dataclasses.fields(cls):
        flag, kind, meta = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata
        help_text = f"{meta.get('help', '')} (default {f.default})"
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_text)
        else:
            # choices are checked by the dataclass, with its message; the help shows them
            metavar = "{" + ",".join(meta["choices"]) + "}" if "choices" in meta else f.name.split("_")[-1].upper()
            group.add_argument(flag, dest=f.name, type=_flag_type(kind), default=f.default, help=help_text,
                               metavar=metavar)


def options_from_args(cls, args: argparse.Namespace):
    """`cls` from the parsed flags (an error about a field names its flag: see `in_flags`)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def in_flags(error: BadInput, parser: argparse.ArgumentParser | None) -> str:
    """An error's message as the command line speaks: a message that begins with the name of the option at
    fault (`seed must be ...`) begins with its flag instead (`--seed must be ...`)."""
    message, param = str(error), getattr(error, "param", None)
    if parser is None or not param or not message.startswith(param + " "):
        return message
    flags = [a.option_strings for a in parser._actions if a.dest == param and a.option_strings]
    if not flags:
        return message
    names = [f for f in flags[0] if not f.startswith("--no-")]  # --offload, not --no-offload
    return max(names, key=len) + message[len(param):]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2, like every other bad input, and it points
    at the help of the command that was given."""

    def error(self, message: str):
        raise BadInput(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._subcommands().get(getattr(parsed, "command", None), self)
            known = [o for a in command._actions for o in a.option_strings]
            close = [m for x in extras if x.startswith("-") for m in difflib.get_close_matches(x, known, n=1)]
            hint = f"; did you mean {close[0]}?" if close else ""
            command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def _subcommands(self) -> dict[str, argparse.ArgumentParser]:
        actions = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(actions[0].choices) if actions else {}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastbark", description="Bark text-to-speech, fast and faithful.")
    parser.add_argument("--version", action="version", version=f"fastbark {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="{say,clone,batch,serve,wyoming,voices,convert,doctor}")
    formats = ", ".join(FORMATS)

    say = sub.add_parser("say", help="speak text into an audio file")
    say.add_argument("text", nargs="?", help="text to speak ('-' or absent: read standard input)")
    say.add_argument("--file", "-f", help="read the text from this file")
    say.add_argument("-o", "--output", default="out.wav",
                     help=f"audio file to write ({', '.join('.' + f for f in FORMATS)}), '-' for standard output "
                          f"(default out.wav)")
    say.add_argument("--format", help=f"audio format, any case: {formats} (pcm: raw 16-bit little-endian mono); "
                                      f"default: from the extension, '-o -' wav. It must agree with a known "
                                      f"extension")
    _model_args(say)
    say.add_argument("--voice", "-v", help="voice preset name (see `fastbark voices`) or .npz file")
    say.add_argument("--seed", type=_flag_type(int), help="random seed: the same seed gives the same audio")
    say.add_argument("--dialogue", action="store_true",
                     help="the text is a script: one NAME: line per turn (or, from a .json file, a list of "
                          "{speaker, text}), each turn in its speaker's voice")
    say.add_argument("--voice-for", action="append", metavar="NAME=VOICE", default=[],
                     help="a dialogue speaker's voice (repeat per speaker; implies --dialogue); a speaker given "
                          "none gets a preset of its own")
    say.add_argument("--turn-pause", type=_flag_type(float), default=0.5,
                     help="seconds of silence between a dialogue's turns (default 0.5)")
    say.add_argument("--save-voice", help="also save the result (a long text: its last chunk) as a reusable .npz voice")
    say.add_argument("--subtitles", help="also write subtitles of the chunks: a .srt or .vtt file")
    say.add_argument("--batch-size", type=_flag_type(int), default=16, help="chunks generated together (default 16)")
    say.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    say.add_argument("--show-backend", action="store_true", help="print what the backend chose, and its fallbacks")
    say.add_argument("--voice-audio", metavar="CLIP",
                     help="a voice made now from a recording of one speaker (wav, flac, ogg, mp3, m4a ...; 5-15 s "
                          "of clean speech): see `fastbark clone`, and --save-voice to keep it")
    add_option_flags(say, EngineOptions)
    add_option_flags(say, GenerationOptions)
    add_option_flags(say, LongFormOptions)
    add_option_flags(say, CloneOptions)

    clone = sub.add_parser("clone", help="make Bark voices (.npz) from recordings of one speaker each "
                                         "(5-15 s of clean speech; only the end of a clip is used)")
    clone.add_argument("clips", nargs="+", metavar="CLIP", help="audio files: wav, flac, ogg, mp3, m4a, webm ...")
    clone.add_argument("-o", "--output", required=True,
                       help="the .npz to write (one clip), or a folder for CLIP-name.npz files (several clips)")
    clone.add_argument("--codec", default=DEFAULT_CODEC,
                       help=f"EnCodec's encoder: a .th file, an EnCodec or Bark folder or hub id (default {DEFAULT_CODEC})")
    clone.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    clone.add_argument("-q", "--quiet", action="store_true", help="no progress bar or report")
    add_option_flags(clone, CloneOptions)

    batch = sub.add_parser("batch", help="speak many items (JSON Lines or CSV) into a folder, resumably")
    batch.add_argument("jobs", help="a .jsonl or .csv file: one item per line (id, text, voice, seed, format, options)")
    batch.add_argument("--out", required=True, help="folder for <id>.<format> files and manifest.jsonl")
    _model_args(batch)
    batch.add_argument("--batch-size", type=_flag_type(int), default=8, help="items generated together (default 8)")
    batch.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run on a Ray cluster at ADDRESS (absent: a local Ray); needs pip install fastbark[ray]")
    batch.add_argument("--actors", type=_flag_type(int), default=1, help="Ray actors, each with its own engine")
    batch.add_argument("--cpus-per-actor", type=_flag_type(float), default=1.0, help="CPUs each actor reserves")
    batch.add_argument("--gpus-per-actor", type=_flag_type(float), default=0.0, help="GPUs each actor reserves")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_option_flags(batch, EngineOptions)

    serve = sub.add_parser("serve", help="serve the OpenAI speech API and a web page (pip install fastbark[server])")
    _model_args(serve)
    add_option_flags(serve, EngineOptions)
    from .server.options import ServerOptions
    add_option_flags(serve, ServerOptions)
    add_option_flags(serve, CloneOptions)

    wyoming = sub.add_parser("wyoming", help="serve the Wyoming protocol, for Home Assistant "
                                             "(pip install fastbark[wyoming])")
    _model_args(wyoming)
    add_option_flags(wyoming, EngineOptions)
    from .server.options import WyomingOptions
    add_option_flags(wyoming, WyomingOptions)
    add_option_flags(wyoming, GenerationOptions)
    add_option_flags(wyoming, LongFormOptions)

    doctor = sub.add_parser("doctor", help="what this machine offers (torch build, GPUs, CPU features, compiler) "
                                           "and the backend and kernels an engine would choose on each device")
    doctor.add_argument("--json", help="also write the diagnosis to this JSON file")

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


class ProgressBars:
    """Renders the pipeline's progress callbacks as tqdm bars on stderr: one over the chunks of a text (with
    its ETA) when there are several, and one for the stage under way."""

    def __init__(self):
        self._chunks = self._stage_bar = None
        self._stage = None

    def __call__(self, p) -> None:
        from tqdm.auto import tqdm
        if p.stage == "chunks":
            if self._chunks is None and p.total > 1:
                self._chunks = tqdm(total=p.total, desc="chunks", unit="chunk", position=0)
            if self._chunks is not None:
                self._chunks.update(p.done - self._chunks.n)
            return
        if p.stage != self._stage or p.done == 0:
            if self._stage_bar is not None:
                self._stage_bar.close()
            self._stage_bar = tqdm(total=p.total, desc=p.stage, unit=p.unit, leave=False,
                                   position=1 if self._chunks is not None else 0)
            self._stage = p.stage
        self._stage_bar.update(p.done - self._stage_bar.n)

    def close(self) -> None:
        for bar in (self._stage_bar, self._chunks):
            if bar is not None:
                bar.close()
        self._chunks = self._stage_bar = None


MAX_TEXT_BYTES = 64 << 20  # a long book is a few MB of text


def _decode_text(data: bytes, where: str) -> str:
    if len(data) > MAX_TEXT_BYTES:
        raise BadInput(f"the text from {where} is larger than {MAX_TEXT_BYTES >> 20} MB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"the text from {where} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                       f"save it as UTF-8") from None


def read_text(args) -> str:
    if args.file and args.text:
        raise BadInput("give the text either as an argument or with --file, not both")
    if args.file:
        try:
            with open(args.file, "rb") as f:
                return _decode_text(f.read(MAX_TEXT_BYTES + 1), repr(args.file))
        except OSError as e:
            raise BadInput(f"cannot read text file {args.file!r}: {e.strerror}") from None
    if args.text is not None and args.text != "-":
        return args.text
    if sys.stdin is None or sys.stdin.isatty():
        raise BadInput("no text given: pass TEXT, --file FILE, or pipe text on standard input")
    return _decode_text(sys.stdin.buffer.read(MAX_TEXT_BYTES + 1), "standard input")


def announce_first_use(engine: EngineOptions, quiet: bool = False) -> None:
    """The first engine on a CPU compiles fastbark's C kernels and measures which run fastest there (cached after):
    say so before that wait, so that it does not look like a hang."""
    if quiet or engine.torch_device.type != "cpu" or engine.cpu_kernel not in ("auto", "c") or \
            engine.backend not in ("auto", "cpu"):
        return
    from .backends.cpu.library import first_use
    if first_use():
        print("fastbark: first use on this CPU: building its C kernels and measuring which run fastest "
              "(once, about half a minute; kept in ~/.cache/fastbark)", file=sys.stderr)


def cmd_say(args) -> None:
    from .engine import Bark
    from .output import AudioWriter, check_output
    from .longform.subtitles import subtitle_format, write_subtitles
    from .voices import check_voice_path
    engine = options_from_args(EngineOptions, args)
    options = options_from_args(GenerationOptions, args)
    long_form = options_from_args(LongFormOptions, args)
    check_output(args.output, args.format)  # every output is checked before anything loads
    if args.save_voice:
        check_voice_path(args.save_voice)
    if args.subtitles:
        subtitle_format(args.subtitles)
    clone = options_from_args(CloneOptions, args)
    text = read_text(args)
    script, speakers = _dialogue(args, text) if args.dialogue or args.voice_for else (None, None)
    voice = args.voice
    if args.voice_audio:
        from .clone.audio import read_clip
        if voice or script is not None:
            raise BadInput("--voice-audio is the voice of the whole text: give it instead of --voice, and not with a "
                           "dialogue (make each speaker's voice with `fastbark clone`)", "voice_audio")
        clip = read_clip(args.voice_audio)  # a bad clip fails now, before any model loads
    announce_first_use(engine, args.quiet)
    tts = Bark.from_pretrained(args.model, codec=args.codec, tokenizer=args.tokenizer, options=engine,
                               vocos=args.vocos, hubert=clone.hubert, quantizer=clone.quantizer)
    if options.decoder == "vocos":
        tts.vocos()  # a missing or bad Vocos fails now, not after the first chunk's generation
    if args.voice_audio:
        voice = tts.voice_from_audio(clip)
        if not args.quiet:
            print(f"fastbark: {tts.cloner().report()}", file=sys.stderr)
    if args.show_backend:
        print(tts.backend, file=sys.stderr)
    bars = None if args.quiet else ProgressBars()
    if script is not None:
        chunks = tts.stream_dialogue(script, speakers, seed=args.seed, turn_pause=args.turn_pause, options=options,
                                     long_form=long_form, batch_size=args.batch_size, progress=bars)
    else:
        chunks = tts.stream(text, voice=voice, seed=args.seed, options=options, long_form=long_form,
                            batch_size=args.batch_size, progress=bars)
    segments, last = [], None
    try:
        with AudioWriter(args.output, args.format) as writer:  # each chunk is written as soon as it is ready
            for chunk in chunks:
                writer.write(chunk.audio)
                segments.append(chunk.segment)
                last = chunk.generation
    finally:
        if bars is not None:
            bars.close()
    if args.subtitles:
        write_subtitles(args.subtitles, segments)
    if args.save_voice:
        last.save_voice(args.save_voice)
    if not args.quiet and args.output != "-":
        print(f"wrote {args.output}: {writer.n_samples / writer.sample_rate:.2f} s at {writer.sample_rate} Hz"
              f"{f' in {len(segments)} chunks' if len(segments) > 1 else ''}", file=sys.stderr)


def cmd_clone(args) -> None:
    """Every clip is read and checked, and every output checked writable, before any model loads."""
    from pathlib import Path
    from .clone.audio import read_clip
    from .clone.cloner import VoiceCloner
    from .options import parse_device
    from .voices import check_voice_path
    clone = options_from_args(CloneOptions, args)
    device = parse_device(args.device)
    if len(args.clips) == 1 and args.output.endswith(".npz"):
        outputs = [args.output]
    else:
        if args.output.endswith(".npz"):
            raise BadInput(f"{len(args.clips)} clips make {len(args.clips)} voices: --output must be a folder, not "
                           f"{args.output!r}", "output")
        folder = Path(args.output)
        if folder.exists() and not folder.is_dir():
            raise BadInput(f"--output {args.output!r} is a file; give a folder (or one clip and a .npz)", "output")
        folder.mkdir(parents=True, exist_ok=True)
        outputs = [str(folder / (Path(c).stem + ".npz")) for c in args.clips]
        twice = sorted({o for o in outputs if outputs.count(o) > 1})
        if twice:
            raise BadInput(f"clips with the same name would write the same voice: {', '.join(twice)}", "output")
    for out in outputs:
        check_voice_path(out)
    clips = [read_clip(c) for c in args.clips]
    cloner = VoiceCloner.from_pretrained(hubert=clone.hubert, quantizer=clone.quantizer, codec=args.codec,
                                         device=device)
    if not args.quiet:
        print(f"fastbark: {cloner.report()}", file=sys.stderr)
    bars = None if args.quiet else ProgressBars()
    try:
        for clip, out in zip(clips, outputs):
            voice = cloner.clone(clip, progress=bars)
            voice.save(out)
            if not args.quiet:
                print(f"wrote {out}: {clip.seconds:.1f} s of {clip.name} -> {len(voice.semantic_prompt)} semantic "
                      f"tokens, {voice.fine_prompt.shape[1]} codec frames", file=sys.stderr)
    finally:
        if bars is not None:
            bars.close()


def _dialogue(args, text: str):
    """The script (checked now, before the model loads) and the speakers' voices from --voice-for."""
    import json
    from .longform.dialogue import parse_script
    if args.voice:
        raise BadInput("--voice gives one voice to a whole text; a dialogue's speakers take --voice-for NAME=VOICE")
    script = text
    if args.file and args.file.lower().endswith(".json"):
        try:
            script = json.loads(text)
        except ValueError as e:
            raise BadInput(f"the dialogue file {args.file!r} is not valid JSON: {e}") from None
    parse_script(script)
    speakers = {}
    for entry in args.voice_for:
        name, sep, voice = entry.partition("=")
        if not sep or not name.strip() or not voice.strip():
            raise BadInput(f"--voice-for takes NAME=VOICE (a preset or an .npz file), got {entry!r}")
        speakers[name.strip()] = voice.strip()
    if speakers:  # the script's other speakers get voices of their own
        for turn in parse_script(script):
            speakers.setdefault(turn.speaker, None)
    return script, speakers or None


def cmd_batch(args) -> int:
    """Exit status 0 when every item is done, 1 when some failed (each recorded in the manifest)."""
    from .batch import batches, plan, run_batch
    engine = options_from_args(EngineOptions, args)
    check_positive = {"--batch-size": args.batch_size, "--actors": args.actors}
    for flag, value in check_positive.items():
        if value < 1:
            raise BadInput(f"{flag} must be at least 1, got {value}")
    manifest, todo, errors, skipped = plan(args.jobs, args.out)
    manifest.append(errors)
    if not args.quiet:
        print(f"fastbark: {len(todo)} items to speak, {skipped} already done, {len(errors)} refused", file=sys.stderr)
    start, records = time.perf_counter(), []
    if args.ray:
        from .ray_batch import run_on_ray
        records = run_on_ray(args, engine, manifest, [item for _, item in todo])
    elif todo:
        from tqdm.auto import tqdm
        from .engine import Bark
        announce_first_use(engine, args.quiet)
        tts = Bark.from_pretrained(args.model, codec=args.codec, tokenizer=args.tokenizer, options=engine,
                               vocos=args.vocos)
        with tqdm(total=len(todo), unit="item", disable=args.quiet) as bar:
            for batch in batches([item for _, item in todo], args.batch_size):  # Ctrl-C keeps the batches done
                new = run_batch(tts, batch, manifest.out)
                manifest.append(new)
                records += new
                bar.update(len(new))
    failed = len(errors) + sum(r["status"] != "ok" for r in records)
    ok = sum(r["status"] == "ok" for r in records)
    print(f"fastbark: {ok} done, {skipped} skipped (done before), {failed} failed, in "
          f"{time.perf_counter() - start:.1f} s; manifest: {manifest.path}", file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(args) -> None:
    import os
    from .server.options import ServerOptions
    engine = options_from_args(EngineOptions, args)
    server = options_from_args(ServerOptions, args)
    if server.api_key is None and os.environ.get("FASTBARK_API_KEY"):
        server = dataclasses.replace(server, api_key=os.environ["FASTBARK_API_KEY"])
    # engine threads: torch's default (one per core) unless --threads; measured in RESULTS section 19, leaving a
    # core to the HTTP side cost 1.86x on an idle 2-core machine and gained nothing beside a busy process
    try:
        import uvicorn
        from .server.app import create_app
    except ImportError as e:
        raise BadInput(f"serve needs the server extra: pip install 'fastbark[server]' ({e.name} is missing)") from None
    from .engine import Bark
    clone = options_from_args(CloneOptions, args)
    announce_first_use(engine)
    tts = Bark.from_pretrained(args.model, codec=args.codec, tokenizer=args.tokenizer, options=engine,
                               vocos=args.vocos, hubert=clone.hubert, quantizer=clone.quantizer)
    import torch
    print(f"fastbark: serving on http://{server.host}:{server.port} ({torch.get_num_threads()} engine threads)",
          file=sys.stderr)
    uvicorn.run(create_app(tts, server), host=server.host, port=server.port, log_level="warning")


def cmd_wyoming(args) -> None:
    import asyncio
    from .server.options import WyomingOptions
    engine = options_from_args(EngineOptions, args)
    options = options_from_args(WyomingOptions, args)
    try:
        from .server.wyoming import serve
    except ImportError as e:
        raise BadInput(f"wyoming needs the wyoming extra: pip install 'fastbark[wyoming]' ({e.name} is missing)") \
            from None
    from .engine import Bark
    announce_first_use(engine)
    tts = Bark.from_pretrained(args.model, codec=args.codec, tokenizer=args.tokenizer, options=engine,
                               vocos=args.vocos)
    if options.voice:
        tts.load_voice(options.voice)  # a bad --voice fails now, not at the first request
    generation, long_form = options_from_args(GenerationOptions, args), options_from_args(LongFormOptions, args)
    if generation.decoder == "vocos":
        tts.vocos()
    print(f"fastbark: Wyoming on {options.uri}", file=sys.stderr)
    asyncio.run(serve(tts, options, generation, long_form))


def cmd_doctor(args) -> None:
    import json
    from .doctor import diagnose
    from .output import write_atomically
    if args.json:
        from .output import check_writable
        check_writable(args.json, "--json file")
    diagnosis = diagnose()
    print(diagnosis)
    if args.json:
        write_atomically(args.json, lambda f: f.write(json.dumps(diagnosis.as_dict(), indent=2).encode()))


def cmd_voices(args) -> None:
    from .engine import Bark
    names = Bark.from_pretrained(args.model, codec=args.codec, tokenizer=args.tokenizer).voices()
    if not names:
        print(f"{args.model} has no voice presets; pass an .npz voice file to --voice", file=sys.stderr)
    for name in names:
        print(name)


def cmd_convert(args) -> None:
    from .options import parse_dtype
    from .loading.convert import check_destination, write_hub_layout
    from .loading.layouts import load_parts
    import torch
    check_destination(args.dst)
    parts = load_parts(args.src, torch.device("cpu"), parse_dtype(args.dtype), tokenizer=args.tokenizer,
                       codec=args.codec)
    dst = write_hub_layout(parts, args.dst, voices=not args.no_voices)
    print(f"wrote {dst}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, docker stop), handled as Ctrl-C is: unfinished files are removed."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"fastbark: warning: {msg}\n"
    parser = build_parser()
    command, previous = None, None
    try:
        args = parser.parse_args(argv)
        command = args.command
        if command is None:  # bare `fastbark`
            parser.print_help()
            return 0
        if command != "serve" and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)  # uvicorn handles its own
        status = {"say": cmd_say, "clone": cmd_clone, "voices": cmd_voices, "convert": cmd_convert, "batch": cmd_batch,
                  "serve": cmd_serve, "wyoming": cmd_wyoming, "doctor": cmd_doctor}[command](args)
    except BadInput as e:
        print(f"fastbark: error: {in_flags(e, parser._subcommands().get(command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        kept = "; finished items are kept (rerun to resume)" if command == "batch" else ""
        print(f"fastbark: {what}{kept}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:
        # the reader of standard output went away (`| head`, a player that quit): stop quietly, as Unix
        # tools do, and keep Python's exit from failing again on the closed pipe
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 128 + signal.SIGPIPE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
