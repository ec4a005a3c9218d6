"""`Bark`: the engine object that holds the four models and runs text -> semantic -> coarse -> fine -> audio."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .constants import (CODEBOOK_SIZE, DEFAULT_COARSE_TEMPERATURE, DEFAULT_FINE_TEMPERATURE, DEFAULT_MIN_EOS_P,
                        DEFAULT_SEMANTIC_TEMPERATURE, MAX_COARSE_HISTORY, MAX_SEMANTIC_TOKENS, N_COARSE_CODEBOOKS,
                        N_FINE_CODEBOOKS, SAMPLE_RATE, SEMANTIC_VOCAB_SIZE, SLIDING_WINDOW_LEN)
from .errors import BadInput
from .loading.layouts import Parts, load_parts
from .models.cpu_gemv import gemv_available, use_gemv
from .models.cpu_kernels import pack_linear, pack_linears, packing_available
from .models.int8 import int8_available, quantize_linears
from .models.decode_step import use_decode_step
from .models.bf16_attention import use_bf16_attention
from .options import CoarseOptions, FineOptions, GenerationOptions, SemanticOptions
from .stages.coarse import generate_coarse
from .stages.fine import generate_fine
from .stages.semantic import generate_semantic
from .stages.text import fit_text_window
from .voices import Voice, VoiceLike, check_tokens, resolve_voice

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE = (None, "int8")  # int8: the three GPTs' linear layers (models/int8.py); CPU only
CPU_KERNELS = ("auto", "c", "onednn", "plain")  # the decode-step linear layers on the CPU (see from_pretrained)


@dataclass(frozen=True)
class Generation:
    """One generated clip: the waveform and the tokens of every stage."""

    audio: np.ndarray  # float32 (n_samples,), 24 kHz
    semantic_tokens: np.ndarray  # (n,)
    coarse_tokens: np.ndarray  # (2, T)
    fine_tokens: np.ndarray  # (8, T)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def to_voice(self) -> Voice:
        """This clip as a voice prompt, to continue in the same voice."""
        return Voice(self.semantic_tokens, self.coarse_tokens, self.fine_tokens)

    def save_voice(self, path: str | os.PathLike) -> None:
        self.to_voice().save(path)


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise BadInput(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}")


def parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInput(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {device!r} asked for, but CUDA is not available on this machine; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadInput(f"device {device!r} asked for, but MPS is not available on this machine; use device='cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"unsupported device {device!r}; accepted: cpu, cuda, cuda:N, mps")
    return dev


def check_quantize(quantize, device: torch.device, dtype: torch.dtype) -> None:
    if quantize not in QUANTIZE:
        raise BadInput(f"unknown quantize {quantize!r}; accepted: None (no quantisation) or 'int8'")
    if quantize == "int8" and not int8_available(device):
        raise BadInput(f"quantize='int8' runs on the CPU only (with a torch that has torch._int_mm); "
                       f"got device {str(device)!r}: use device='cpu' or no quantisation")
    if quantize == "int8" and dtype == torch.float16:
        raise BadInput("quantize='int8' works with dtype float32 or bfloat16, not float16")


def check_cpu_kernel(cpu_kernel) -> None:
    if cpu_kernel not in CPU_KERNELS:
        raise BadInput(f"unknown cpu_kernel {cpu_kernel!r}; accepted: {', '.join(CPU_KERNELS)}")


class Bark:
    """Bark text-to-speech. Make one with `Bark.from_pretrained(...)`; it holds no global state."""

    def __init__(self, parts: Parts, device: torch.device, dtype: torch.dtype, cpu_kernel: str = "auto",
                 quantize: str | None = None):
        check_quantize(quantize, device, dtype)
        check_cpu_kernel(cpu_kernel)
        decoders = (parts.semantic, parts.coarse)  # the decode-step GPTs; the fine GPT runs big GEMMs
        fused = cpu_kernel in ("auto", "c") and device.type == "cpu"  # fastbark's C kernels may be used
        if quantize == "int8":  # all three GPTs: the fine GPT's big products gain from int8 too
            for model in (*decoders, parts.fine):
                quantize_linears(model)
            if fused:  # the decode steps in one C call each (decode_step.py)
                for model in decoders:
                    use_decode_step(model)
        elif cpu_kernel in ("auto", "c") and gemv_available(device, dtype):
            for model in decoders:
                use_gemv(model)
        elif cpu_kernel in ("auto", "c", "onednn") and packing_available(device, dtype):
            for model in decoders:
                if fused and use_decode_step(model):  # bfloat16: the blocks' decode step in one C call
                    model.lm_head = pack_linear(model.lm_head) or model.lm_head
                else:
                    pack_linears(model)
        if (quantize == "int8" or dtype == torch.bfloat16) and fused:
            for model in (*decoders, parts.fine):  # the fast modes: whole-sequence attention in bfloat16
                use_bf16_attention(model)
        self.semantic_model, self.coarse_model, self.fine_model = parts.semantic, parts.coarse, parts.fine
        self.codec, self.tokenizer, self.voice_library = parts.codec, parts.tokenizer, parts.voices
        self.source, self.device, self.dtype, self.quantize = parts.source, device, dtype, quantize
        self.progress = False  # tqdm bars per stage (the CLI turns them on)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = "suno/bark-small", *, device="cpu", dtype="float32",
                        tokenizer: str | os.PathLike | None = None, codec: str | os.PathLike | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, cpu_kernel: str = "auto",
                        quantize: str | None = None) -> "Bark":
        """Load from a hub id (`suno/bark-small`, `suno/bark`), a folder in the hub layout, or a folder of
        Suno's original `.pt` files (EnCodec from `codec`: a `.th` file, a folder or hub id; default
        `facebook/encodec_24khz`). `tokenizer` overrides the tokenizer (a file, folder or hub id).
        `cpu_kernel` picks the CPU decode step's linear layers: "auto" (the C kernel in float32 where a C
        compiler exists, else oneDNN-packed weights), "c", "onednn", or "plain" (`F.linear`).
        `quantize="int8"` is the int8 fast mode (CPU): see README for its measured fidelity."""
        dev, dt = parse_device(device), parse_dtype(dtype)
        check_quantize(quantize, dev, dt)
        check_cpu_kernel(cpu_kernel)
        parts = load_parts(source, dev, dt, tokenizer=tokenizer, codec=codec, revision=revision,
                           cache_dir=os.fspath(cache_dir) if cache_dir else None, local_files_only=local_files_only)
        return cls(parts, dev, dt, cpu_kernel, quantize)

    # ------------------------------------------------------------ voices

    def voices(self) -> list[str]:
        """Names of the checkpoint's voice presets."""
        return self.voice_library.names() if self.voice_library else []

    def load_voice(self, voice: VoiceLike) -> Voice | None:
        return resolve_voice(voice, self.voice_library)

    # ------------------------------------------------------------ stages

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BadInput(f"seed must be an integer or None, got {seed!r}")
        return torch.Generator(self.device).manual_seed(seed)

    def tokenize(self, text: str) -> list[int]:
        return fit_text_window(self.tokenizer.encode(text))

    def text_to_semantic(self, text: str, voice: VoiceLike = None, *,
                         temperature: float | None = DEFAULT_SEMANTIC_TEMPERATURE,
                         top_k: int | None = None, top_p: float | None = None,
                         min_eos_p: float | None = DEFAULT_MIN_EOS_P, max_tokens: int = MAX_SEMANTIC_TOKENS,
                         allow_early_stop: bool = True, seed: int | None = None) -> np.ndarray:
        options = SemanticOptions(temperature, top_k, top_p, min_eos_p, max_tokens, allow_early_stop)
        ids = self.tokenize(text)
        return generate_semantic(self.semantic_model, [ids], self.load_voice(voice), options,
                                 self._generator(seed), self.progress)[0]

    def semantic_to_coarse(self, semantic, voice: VoiceLike = None, *,
                           temperature: float | None = DEFAULT_COARSE_TEMPERATURE,
                           top_k: int | None = None, top_p: float | None = None,
                           max_coarse_history: int = MAX_COARSE_HISTORY,
                           sliding_window_len: int = SLIDING_WINDOW_LEN, seed: int | None = None) -> np.ndarray:
        options = CoarseOptions(temperature, top_k, top_p, max_coarse_history, sliding_window_len)
        semantic = check_tokens("semantic tokens", semantic, None, SEMANTIC_VOCAB_SIZE, allow_empty=True)
        return generate_coarse(self.coarse_model, [semantic], self.load_voice(voice), options,
                               self._generator(seed), self.progress)[0]

    def coarse_to_fine(self, coarse, voice: VoiceLike = None, *,
                       temperature: float | None = DEFAULT_FINE_TEMPERATURE, seed: int | None = None) -> np.ndarray:
        coarse = check_tokens("coarse tokens", coarse, N_COARSE_CODEBOOKS, CODEBOOK_SIZE, allow_empty=True)
        return generate_fine(self.fine_model, [coarse], self.load_voice(voice), FineOptions(temperature),
                             self._generator(seed), self.progress)[0]

    @torch.inference_mode()
    def decode(self, fine) -> np.ndarray:
        """Fine codes (8, T) -> float32 waveform (T * 320,) at 24 kHz."""
        fine = check_tokens("fine tokens", fine, N_FINE_CODEBOOKS, CODEBOOK_SIZE, allow_empty=True)
        if fine.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = torch.from_numpy(fine).to(self.codec.quantizer.layers[0].codebook.embed.device)[None]  # (1, 8, T)
        return self.codec(codes)[0].float().cpu().numpy()

    # ------------------------------------------------------------ end to end

    def generate(self, text: str | list[str], voice: VoiceLike | list[VoiceLike] = None, *,
                 options: GenerationOptions | None = None, seed: int | None = None, batch_size: int = 16,
                 **option_values) -> Generation | list[Generation]:
        """Text (or a list of texts) -> Generation(s). Options: the fields of GenerationOptions, or `options=`.

        A list of texts runs through every stage as a batch (`batch_size` texts at a time). With a
        list of voices (one per text), the texts that share a voice are batched together.
        """
        if options is not None and option_values:
            raise BadInput("give either options=GenerationOptions(...) or option keywords, not both")
        if options is None:
            unknown = set(option_values) - set(GenerationOptions.__dataclass_fields__)
            if unknown:
                raise BadInput(f"unknown option(s) {', '.join(sorted(unknown))}; accepted: "
                               f"{', '.join(GenerationOptions.__dataclass_fields__)}")
            options = GenerationOptions(**option_values)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput(f"batch_size must be an integer >= 1, got {batch_size!r}")
        single = not isinstance(text, (list, tuple))
        texts = [text] if single else list(text)
        if not texts:
            raise BadInput("the list of texts is empty")
        if isinstance(voice, (list, tuple)):
            if single or len(voice) != len(texts):
                raise BadInput(f"a list of voices needs one voice per text: {len(voice)} voices for "
                               f"{len(texts)} text{'s' if len(texts) != 1 else ''}")
            voices = list(voice)
        else:
            voices = [voice] * len(texts)
        ids = [self.tokenize(t) for t in texts]  # validate every text and voice before generating any
        groups: dict[object, tuple[Voice | None, list[int]]] = {}  # a voice (by path, or by object) -> its texts
        for i, v in enumerate(voices):
            key = os.fspath(v) if isinstance(v, (str, os.PathLike)) else id(v)
            if key not in groups:
                groups[key] = (self.load_voice(v), [])
            groups[key][1].append(i)
        generator = self._generator(seed)
        results: list[Generation | None] = [None] * len(texts)
        for prompt, members in groups.values():
            for first in range(0, len(members), batch_size):
                chunk = members[first: first + batch_size]
                for i, result in zip(chunk, self._generate_batch([ids[i] for i in chunk], prompt, options, generator)):
                    results[i] = result
        return results[0] if single else results

    def _generate_batch(self, ids: list[list[int]], voice: Voice | None, options: GenerationOptions,
                        generator: torch.Generator | None) -> list[Generation]:
        semantic = generate_semantic(self.semantic_model, ids, voice, options.semantic, generator, self.progress)
        if any(len(s) == 0 for s in semantic):
            warnings.warn("the semantic model stopped at once (end of speech first): the audio is empty",
                          stacklevel=3)
        coarse = generate_coarse(self.coarse_model, semantic, voice, options.coarse, generator, self.progress)
        fine = generate_fine(self.fine_model, coarse, voice, options.fine, generator, self.progress)
        return [Generation(self.decode(f), s, c, f) for s, c, f in zip(semantic, coarse, fine)]
