"""Every option, defined once: frozen dataclasses, validated when made.

`EngineOptions` are how an engine is built (device, dtype, quantisation, kernels, threads);
`GenerationOptions` are how a text is spoken (defaults: Suno's original code). The Python keywords
of `Bark.from_pretrained` and `Bark.generate`, and the `fastbark` command's flags, come from these
fields (cli.py reads each field's type, default and `help`), so adding a field here adds it
everywhere. The checks here are the ones every entry point shares.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from .constants import (CONTEXT_LEN, DEFAULT_COARSE_TEMPERATURE, DEFAULT_FINE_TEMPERATURE, DEFAULT_MIN_EOS_P,
                        DEFAULT_SEMANTIC_TEMPERATURE, MAX_COARSE_HISTORY, MAX_COARSE_INPUT, MAX_SEMANTIC_TOKENS,
                        MAX_TEXT_TOKENS, SLIDING_WINDOW_LEN)
from .clone.quantizer import DEFAULT_QUANTIZER, QUANTIZERS
from .errors import BadInput
from .loading.hubert import DEFAULT_HUBERT

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE = ("int8", "int4")  # the three GPTs' linear layers (backends/cpu/int8.py, int4.py); CPU only
CPU_KERNELS = ("auto", "c", "onednn", "plain")  # the CPU backend's decode-step kernels (measured, or one named)
ATTENTION = ("auto", "flash", "math")  # whole-sequence attention: the backend's choice, or one SDPA kernel
MAX_THREADS = 1024  # more CPU threads than any machine fastbark runs on has cores (torch overflows far beyond)
DECODERS = ("encodec", "vocos")  # codes -> audio: EnCodec's own decoder, or Vocos (models/vocos.py)
BACKENDS = ("auto", "cpu", "cuda", "torch")  # auto: cpu on the CPU, cuda on CUDA, torch elsewhere (backends/__init__.py)


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


# ------------------------------------------------------------------ shared checks


def check_number(name: str, value, *, integer: bool = False, low: float | None = None, high: float | None = None,
                 low_open: bool = False, none_ok: bool = False, accepted: str = ""):
    """`value` as a finite int (or float), within [low, high] (low excluded if `low_open`); BadInput
    naming `name` and what is accepted otherwise. Booleans are not numbers here; numpy's integers and
    floats are (returned as Python's)."""
    if value is None and none_ok:
        return None
    kinds = numbers.Integral if integer else numbers.Real  # numbers.Real includes the integers
    ok = isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if not accepted:
            bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
                     f"{high if high is not None else 'inf'}]"
            accepted = f"{'an integer' if integer else 'a number'} in {bounds}" + (" or none" if none_ok else "")
        raise BadInput(f"{name} must be {accepted}, got {shown(value)}", param=name)
    return value


def shown(value) -> str:
    """A value as an error message shows it: short, and printable (a lone surrogate is escaped)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise BadInput(f"{name} {shown(value)} is unknown; accepted: {', '.join(map(str, choices))}", param=name)


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise BadInput(f"{name} must be true or false, got {shown(value)}", param=name)


def check_seed(seed, name: str = "seed") -> int | None:
    """A seed as a Python int in 0..2**64-1 (numpy integers too), or None."""
    return check_number(name, seed, integer=True, low=0, high=MAX_SEED, none_ok=True,
                        accepted="an integer in 0..2**64-1 or none")


MAX_SEED = 2**64 - 1  # a seed is a 64-bit word (pipeline/sampling.py hashes it)
MIN_TEMPERATURE = 1e-6  # logits / temperature must stay finite in float32: |logits| < 1e32 then, far above any model's


def check_sampling(temperature: float | None, top_k: int | None = None, top_p: float | None = None,
                   temperature_name: str = "temperature") -> None:
    accepted = f"a number >= 0 and finite (0 = greedy; otherwise at least {MIN_TEMPERATURE:g}) or none"
    temperature = check_number(temperature_name, temperature, low=0, none_ok=True, accepted=accepted)
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
        raise BadInput(f"{temperature_name} must be {accepted}, got {temperature!r}", param=temperature_name)
    check_number("top_k", top_k, integer=True, low=1, none_ok=True, accepted="an integer >= 1 or none")
    check_number("top_p", top_p, low=0, low_open=True, high=1, none_ok=True, accepted="in (0, 1] or none")


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise BadInput(f"dtype {shown(dtype)} is unknown; accepted: {', '.join(DTYPES)}", param="dtype")


def cuda_hint() -> str:
    """Why `device="cuda"` cannot work here, in one sentence (`fastbark doctor` tells more)."""
    if not torch.version.cuda:
        return ("this torch is a CPU-only build: install a CUDA wheel of torch (see pytorch.org), then check with "
                "`fastbark doctor`")
    return (f"this torch is built for CUDA {torch.version.cuda} but sees no GPU (the driver? CUDA_VISIBLE_DEVICES?); "
            f"`fastbark doctor` shows what it sees")


def parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInput(f"device {shown(device)} is unknown; accepted: cpu, cuda, cuda:N, mps", param="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {shown(device)} asked for, but CUDA is not available on this machine: "
                       f"{cuda_hint()}; or use the cpu device", param="device")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"device {shown(device)} asked for, but MPS is not available on this machine; "
                       f"the cpu device is", param="device")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"device {shown(device)} is not supported; accepted: cpu, cuda, cuda:N, mps", param="device")
    return dev


# ------------------------------------------------------------------ engine


@dataclass(frozen=True)
class EngineOptions:
    """How an engine is built. Values are normalised: `dtype` and `device` are canonical strings."""

    device: str = field(default="cpu", metadata=_help("cpu, cuda, cuda:N or mps"))
    dtype: str = field(default="float32", metadata=_help("float32 (exact), bfloat16 or float16",
                                                         choices=tuple(DTYPES)))
    quantize: str | None = field(default=None, metadata=_help(
        "int8: the fast int8 mode on the CPU (int8 linear layers); int4: 4-bit weights in groups of 32, for machines "
        "whose memory bandwidth limits int8 (see the README for both modes' fidelity)", choices=QUANTIZE))
    cpu_kernel: str = field(default="auto", metadata=_help(
        "the CPU decode step's kernels: auto (measured on this machine), c (the C kernels and the one-call step), "
        "onednn, or plain (F.linear)",
        choices=CPU_KERNELS))
    backend: str = field(default="auto", metadata=_help(
        "auto (cpu on the CPU, cuda on a CUDA GPU, torch elsewhere), cpu (fastbark's CPU kernels), cuda (static "
        "caches and CUDA-graph decode steps), or torch (plain torch, any device)",
        choices=BACKENDS))
    threads: int | None = field(default=None, metadata=_help(
        "CPU threads for torch (default: torch's choice, one per core); set for the whole process"))
    attention: str = field(default="auto", metadata=_help(
        "whole-sequence attention (prefills, fine passes): auto (the backend's choice; on CUDA, SDPA picks "
        "flash, cuDNN or memory-efficient), flash (FlashAttention-2; CUDA, float16 or bfloat16), or math "
        "(SDPA's reference kernel, any device)", choices=ATTENTION))
    offload: bool = field(default=False, metadata=_help(
        "keep the three GPTs in pinned CPU memory and move each to the GPU only for its stage, the next one "
        "prefetched (CUDA only; less GPU memory)"))
    compile: bool = field(default=False, metadata=_help(
        "compile the CUDA backend's decode step with torch.compile (fused kernels inside its CUDA graphs; "
        "the first generation takes longer while it compiles; experimental: on the one GPU measured, 0.49 ms a "
        "step against the default fused step's 0.34 ms, after 28 s of compiling)"))

    def __post_init__(self):
        dtype, device = parse_dtype(self.dtype), parse_device(self.device)
        object.__setattr__(self, "dtype", str(dtype).removeprefix("torch."))
        object.__setattr__(self, "device", str(device))
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise BadInput(f"quantize {shown(self.quantize)} is unknown; accepted: {', '.join(QUANTIZE)}, or none (no "
                           f"quantisation)", param="quantize")
        check_choice("cpu_kernel", self.cpu_kernel, CPU_KERNELS)
        check_choice("backend", self.backend, BACKENDS)
        check_number("threads", self.threads, integer=True, low=1, high=MAX_THREADS, none_ok=True,
                     accepted=f"an integer in 1..{MAX_THREADS} or none")
        if self.quantize is not None:
            q = self.quantize
            if device.type != "cpu" or (q == "int8" and not hasattr(torch, "_int_mm")):
                needs = " (with a torch that has torch._int_mm)" if q == "int8" else ""
                raise BadInput(f"quantize {q} runs on the CPU only{needs}, not on device {self.device!r}: use the cpu "
                               f"device or no quantisation", param="quantize")
            if dtype == torch.float16:
                raise BadInput(f"quantize {q} works with dtype float32 or bfloat16, not float16", param="quantize")
            if self.backend == "torch":
                raise BadInput(f"quantize {q} needs the cpu backend (backend auto or cpu), not torch", param="quantize")
        check_choice("attention", self.attention, ATTENTION)
        if self.attention == "flash" and (device.type != "cuda" or dtype == torch.float32):
            raise BadInput(f"attention flash (PyTorch's FlashAttention-2 kernels) runs on a CUDA GPU in float16 or "
                           f"bfloat16, not on device {self.device!r} in {self.dtype}: use attention auto or math",
                           param="attention")
        check_bool("offload", self.offload)
        if self.offload and device.type != "cuda":
            raise BadInput(f"offload keeps the models in CPU memory for a GPU: it needs device cuda, not "
                           f"{self.device!r} (on the CPU the models are in CPU memory already)", param="offload")
        check_bool("compile", self.compile)
        if self.backend == "cuda" and device.type != "cuda":
            raise BadInput(f"backend cuda runs on a CUDA GPU, not on device {self.device!r}; use backend auto, "
                           f"or device cuda", param="backend")
        if self.compile and (device.type != "cuda" or self.backend not in ("auto", "cuda")):
            raise BadInput(f"compile fuses the CUDA backend's decode step: it needs device cuda with backend auto or "
                           f"cuda, not device {self.device!r} with backend {self.backend}", param="compile")
        if self.backend == "cpu" and device.type != "cpu":
            raise BadInput(f"backend cpu runs on the CPU, not on device {self.device!r}; use backend auto or torch",
                           param="backend")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# ------------------------------------------------------------------ voices from recordings


@dataclass(frozen=True)
class CloneOptions:
    """Where a voice made from a recording gets its models (clone/; README "Voices from recordings")."""

    quantizer: str = field(default=DEFAULT_QUANTIZER, metadata=_help(
        f"the HuBERT-feature quantizer: a name ({', '.join(QUANTIZERS)}; see the README's table), a .pth file, "
        f"or owner/repo:file.pth on the hub"))
    hubert: str = field(default=DEFAULT_HUBERT, metadata=_help(
        "HuBERT base: a hub id, a hub-layout folder, or fairseq's hubert_base_ls960.pt"))

    def __post_init__(self):
        for name in ("quantizer", "hubert"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise BadInput(f"{name} must be a non-empty name, path or hub id, got {shown(value)}", param=name)


# ------------------------------------------------------------------ generation


@dataclass(frozen=True)
class SemanticOptions:
    temperature: float | None = DEFAULT_SEMANTIC_TEMPERATURE
    top_k: int | None = None
    top_p: float | None = None
    min_eos_p: float | None = DEFAULT_MIN_EOS_P  # stop once p(EOS) >= this; None: only when EOS is chosen
    max_tokens: int = MAX_SEMANTIC_TOKENS
    allow_early_stop: bool = True  # False: EOS is never chosen, always max_tokens tokens

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)
        check_number("min_eos_p", self.min_eos_p, low=0, low_open=True, high=1, none_ok=True,
                     accepted="in (0, 1] or none")
        check_number("max semantic tokens", self.max_tokens, integer=True, low=1, high=MAX_SEMANTIC_TOKENS,
                     accepted=f"an integer in 1..{MAX_SEMANTIC_TOKENS}")
        check_bool("allow_early_stop", self.allow_early_stop)


@dataclass(frozen=True)
class CoarseOptions:
    temperature: float | None = DEFAULT_COARSE_TEMPERATURE
    top_k: int | None = None
    top_p: float | None = None
    max_coarse_history: int = MAX_COARSE_HISTORY
    sliding_window_len: int = SLIDING_WINDOW_LEN

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)
        check_number("max_coarse_history", self.max_coarse_history, integer=True, low=60, high=MAX_COARSE_HISTORY,
                     accepted=f"an integer in 60..{MAX_COARSE_HISTORY}")
        room = CONTEXT_LEN - MAX_COARSE_INPUT - self.max_coarse_history  # positions left for generation
        check_number("sliding_window_len", self.sliding_window_len, integer=True, low=1, high=room,
                     accepted=f"an integer in 1..{room} with max_coarse_history={self.max_coarse_history}")


@dataclass(frozen=True)
class FineOptions:
    temperature: float | None = DEFAULT_FINE_TEMPERATURE

    def __post_init__(self):
        check_sampling(self.temperature)


@dataclass(frozen=True)
class GenerationOptions:
    """Every option of `Bark.generate`, one frozen value."""

    semantic_temperature: float | None = field(default=DEFAULT_SEMANTIC_TEMPERATURE, metadata=_help(
        "semantic stage sampling temperature; 0 or none: greedy"))
    coarse_temperature: float | None = field(default=DEFAULT_COARSE_TEMPERATURE, metadata=_help(
        "coarse stage sampling temperature; 0 or none: greedy"))
    fine_temperature: float | None = field(default=DEFAULT_FINE_TEMPERATURE, metadata=_help(
        "fine stage sampling temperature; 0 or none: greedy"))
    top_k: int | None = field(default=None, metadata=_help("keep the k likeliest tokens (semantic and coarse)"))
    top_p: float | None = field(default=None, metadata=_help("nucleus sampling mass (semantic and coarse)"))
    min_eos_p: float | None = field(default=DEFAULT_MIN_EOS_P, metadata=_help(
        "stop when p(end of speech) reaches this; none: only when end of speech is chosen"))
    max_semantic_tokens: int = field(default=MAX_SEMANTIC_TOKENS, metadata=_help(
        f"at most this many semantic tokens (1..{MAX_SEMANTIC_TOKENS}, ~49.9 per second of speech)"))
    allow_early_stop: bool = field(default=True, metadata=_help(
        "stop at end of speech (--no-allow-early-stop: always max-semantic-tokens tokens)"))
    max_coarse_history: int = field(default=MAX_COARSE_HISTORY, metadata=_help(
        f"coarse tokens of history per window (60..{MAX_COARSE_HISTORY})"))
    sliding_window_len: int = field(default=SLIDING_WINDOW_LEN, metadata=_help(
        "coarse tokens generated per window"))
    decoder: str = field(default="encodec", metadata=_help(
        "codes -> audio: encodec (EnCodec's decoder, as Bark) or vocos (Vocos, charactr/vocos-encodec-24khz, "
        "loaded at first use: less noise; --vocos SOURCE for another copy)", choices=DECODERS))

    def __post_init__(self):
        # errors name these fields (not the stage options' own names); then the stage options validate the rest
        for stage in ("semantic", "coarse", "fine"):
            check_sampling(getattr(self, f"{stage}_temperature"), temperature_name=f"{stage}_temperature")
        check_number("max_semantic_tokens", self.max_semantic_tokens, integer=True, low=1, high=MAX_SEMANTIC_TOKENS,
                     accepted=f"an integer in 1..{MAX_SEMANTIC_TOKENS}")
        check_choice("decoder", self.decoder, DECODERS)
        self.semantic, self.coarse, self.fine  # validate now, not halfway through a generation

    @property
    def semantic(self) -> SemanticOptions:
        return SemanticOptions(self.semantic_temperature, self.top_k, self.top_p, self.min_eos_p,
                               self.max_semantic_tokens, self.allow_early_stop)

    @property
    def coarse(self) -> CoarseOptions:
        return CoarseOptions(self.coarse_temperature, self.top_k, self.top_p, self.max_coarse_history,
                             self.sliding_window_len)

    @property
    def fine(self) -> FineOptions:
        return FineOptions(self.fine_temperature)


SPEAKERS = ("first", "continue")
VERIFY = ("off", "duration", "asr")  # longform/verify.py
# the server's and Wyoming's short first chunk: about a third of a full 13 s chunk, so the first audio of a long
# text comes after a third of the compute (LongFormOptions.first_chunk_seconds)
SERVED_FIRST_CHUNK_SECONDS = 4.0
BARK_LANGUAGES = ("en", "de", "es", "fr", "hi", "it", "ja", "ko", "pl", "pt", "ru", "tr", "zh")


@dataclass(frozen=True)
class LongFormOptions:
    """How a text longer than one generation is cut, kept in one voice and joined (see README "Long texts")."""

    max_chunk_seconds: float = field(default=13.0, metadata=_help(
        "estimated speech per chunk, at most (1..15 s; Bark speaks at most ~14 s per generation)"))
    first_chunk_seconds: float | None = field(default=None, metadata=_help(
        "a short first chunk of about this many seconds (1..15), cut at a clause or sentence boundary, so the "
        f"first audio comes sooner; none: the entry point's default (off here; {SERVED_FIRST_CHUNK_SECONDS:g} s "
        "in the server and Wyoming); 0: off"))
    max_chunk_tokens: int = field(default=MAX_TEXT_TOKENS, metadata=_help(
        f"wordpieces per chunk, at most (1..{MAX_TEXT_TOKENS})"))
    language: str = field(default="en", metadata=_help(
        "the text's language, for sentence splitting", choices=BARK_LANGUAGES))
    speaker: str = field(default="first", metadata=_help(
        "first: with no voice, the first chunk's speech is the voice of the rest; continue: each chunk "
        "continues from the one before (sequential, Suno's long-form notebook)", choices=SPEAKERS))
    pause: float = field(default=0.25, metadata=_help("seconds of silence between chunks (0..10)"))
    trim: bool = field(default=True, metadata=_help("trim each chunk's silent edges (--no-trim: keep them)"))
    trim_db: float = field(default=-40.0, metadata=_help(
        "a 10 ms frame quieter than this (dBFS, -120..0) counts as silence"))
    fade: float = field(default=0.01, metadata=_help("seconds of fade at each chunk's edges (0..1)"))
    verify: str = field(default="off", metadata=_help(
        "check each chunk and generate it again when it went wrong: off, duration (its speech lasts about "
        "what its words need) or asr (also a speech recogniser's transcript; pip install fastbark[verify])",
        choices=VERIFY))
    max_wer: float = field(default=0.35, metadata=_help(
        "verify asr: the highest word error rate a chunk passes with (0..1)"))
    duration_ratio: float = field(default=2.5, metadata=_help(
        "verify: a chunk passes if its speech lasts between 1/ratio and ratio times what its words need (>1..10)"))
    max_attempts: int = field(default=3, metadata=_help("verify: generations of a chunk at most (1..10)"))

    def __post_init__(self):
        check_number("max_chunk_seconds", self.max_chunk_seconds, low=1, high=15)
        first = check_number("first_chunk_seconds", self.first_chunk_seconds, low=0, high=15, none_ok=True,
                             accepted="a number of seconds in 1..15, 0 (off) or none")
        if first is not None and 0 < first < 1:
            raise BadInput(f"first_chunk_seconds must be a number of seconds in 1..15, 0 (off) or none, got {first!r}",
                           param="first_chunk_seconds")
        check_number("max_chunk_tokens", self.max_chunk_tokens, integer=True, low=1, high=MAX_TEXT_TOKENS)
        check_choice("language", self.language, BARK_LANGUAGES)
        check_choice("speaker", self.speaker, SPEAKERS)
        check_number("pause", self.pause, low=0, high=10)
        check_bool("trim", self.trim)
        check_number("trim_db", self.trim_db, low=-120, high=0)
        check_number("fade", self.fade, low=0, high=1)
        check_choice("verify", self.verify, VERIFY)
        check_number("max_wer", self.max_wer, low=0, high=1)
        check_number("duration_ratio", self.duration_ratio, low=1, low_open=True, high=10)
        check_number("max_attempts", self.max_attempts, integer=True, low=1, high=10)

    @property
    def verification(self) -> tuple:
        """What decides how chunks are checked (chunks with different checks never share a batch)."""
        if self.verify == "off":
            return ("off",)
        return self.verify, self.max_wer, self.duration_ratio, self.max_attempts, self.language, self.trim_db


def make_options(cls, options, values: dict, what: str):
    """`options` (an instance of `cls`) or `cls(**values)`: never both, no unknown names."""
    if options is not None:
        if values:
            raise BadInput(f"give either {what}={cls.__name__}(...) or option keywords, not both")
        if not isinstance(options, cls):
            raise BadInput(f"{what} must be a fastbark.{cls.__name__}, got {type(options).__name__}")
        return options
    names = [f.name for f in fields(cls)]
    unknown = set(values) - set(names)
    if unknown:
        raise BadInput(f"unknown option(s) {', '.join(sorted(unknown))}; accepted: {', '.join(names)}")
    return cls(**values)
