"""`Bark`: the engine object that holds the four models and runs text -> semantic -> coarse -> fine -> audio."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .backends import BackendReport, select
from .backends.base import Models
from .constants import CODEBOOK_SIZE, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS, SAMPLE_RATE, SEMANTIC_VOCAB_SIZE
from .errors import BadInput
from .loading.layouts import Parts, load_parts
from .options import (CoarseOptions, EngineOptions, FineOptions, GenerationOptions, SemanticOptions, check_number,
                      make_options)
from .pipeline.coarse import generate_coarse
from .pipeline.fine import generate_fine
from .pipeline.progress import ProgressCallback
from .pipeline.semantic import generate_semantic
from .text.tokenizer import fit_text_window
from .voices import Voice, VoiceLike, check_tokens, resolve_voice


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


class Bark:
    """Bark text-to-speech. Make one with `Bark.from_pretrained(...)`; it holds no global state."""

    def __init__(self, parts: Parts, options: EngineOptions | None = None):
        self.options = options or EngineOptions()  # the parts must have been loaded for its device and dtype
        self.semantic_model, self.coarse_model, self.fine_model = parts.semantic, parts.coarse, parts.fine
        self.codec, self.tokenizer, self.voice_library = parts.codec, parts.tokenizer, parts.voices
        self.source = parts.source
        # the backend prepares the models in place, through their seams; its report says what it chose
        self.backend: BackendReport = select(self.options, Models(parts.semantic, parts.coarse, parts.fine))

    @property
    def device(self) -> torch.device:
        return self.options.torch_device

    @property
    def dtype(self) -> torch.dtype:
        return self.options.torch_dtype

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike = "suno/bark-small", *,
                        tokenizer: str | os.PathLike | None = None, codec: str | os.PathLike | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, options: EngineOptions | None = None,
                        **engine_options) -> "Bark":
        """Load from a hub id (`suno/bark-small`, `suno/bark`), a folder in the hub layout, or a folder of
        Suno's original `.pt` files (EnCodec from `codec`: a `.th` file, a folder or hub id; default
        `facebook/encodec_24khz`). `tokenizer` overrides the tokenizer (a file, folder or hub id).

        Engine options: `options=EngineOptions(...)`, or its fields as keywords: `device`, `dtype`
        (float32 is the exact mode), `quantize` ("int8": the int8 fast mode, CPU), `cpu_kernel`
        ("auto", "c", "onednn", "plain"), `backend` ("auto", "cpu", "torch") and `threads`.
        `tts.backend` reports what was chosen."""
        options = make_options(EngineOptions, options, engine_options, "options")
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        parts = load_parts(source, options.torch_device, options.torch_dtype, tokenizer=tokenizer, codec=codec,
                           revision=revision, cache_dir=os.fspath(cache_dir) if cache_dir else None,
                           local_files_only=local_files_only)
        return cls(parts, options)

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

    def text_to_semantic(self, text: str, voice: VoiceLike = None, *, seed: int | None = None,
                         progress: ProgressCallback | None = None, **options) -> np.ndarray:
        """Semantic tokens (n,) for `text`. Options: the fields of `SemanticOptions`."""
        options = make_options(SemanticOptions, None, options, "options")
        ids = self.tokenize(text)
        return generate_semantic(self.semantic_model, [ids], self.load_voice(voice), options,
                                 self._generator(seed), progress)[0]

    def semantic_to_coarse(self, semantic, voice: VoiceLike = None, *, seed: int | None = None,
                           progress: ProgressCallback | None = None, **options) -> np.ndarray:
        """Coarse codes (2, T) for semantic tokens (n,). Options: the fields of `CoarseOptions`."""
        options = make_options(CoarseOptions, None, options, "options")
        semantic = check_tokens("semantic tokens", semantic, None, SEMANTIC_VOCAB_SIZE, allow_empty=True)
        return generate_coarse(self.coarse_model, [semantic], self.load_voice(voice), options,
                               self._generator(seed), progress)[0]

    def coarse_to_fine(self, coarse, voice: VoiceLike = None, *, seed: int | None = None,
                       progress: ProgressCallback | None = None, **options) -> np.ndarray:
        """Fine codes (8, T) for coarse codes (2, T). Options: the fields of `FineOptions`."""
        options = make_options(FineOptions, None, options, "options")
        coarse = check_tokens("coarse tokens", coarse, N_COARSE_CODEBOOKS, CODEBOOK_SIZE, allow_empty=True)
        return generate_fine(self.fine_model, [coarse], self.load_voice(voice), options,
                             self._generator(seed), progress)[0]

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
                 progress: ProgressCallback | None = None, **option_values) -> Generation | list[Generation]:
        """Text (or a list of texts) -> Generation(s). Options: the fields of GenerationOptions, or `options=`.

        A list of texts runs through every stage as a batch (`batch_size` texts at a time). With a
        list of voices (one per text), the texts that share a voice are batched together. `progress`
        is called as each stage advances (pipeline/progress.py).
        """
        options = make_options(GenerationOptions, options, option_values, "options")
        check_number("batch_size", batch_size, integer=True, low=1, accepted="an integer >= 1")
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
                batch = self._generate_batch([ids[i] for i in chunk], prompt, options, generator, progress)
                for i, result in zip(chunk, batch):
                    results[i] = result
        return results[0] if single else results

    def _generate_batch(self, ids: list[list[int]], voice: Voice | None, options: GenerationOptions,
                        generator: torch.Generator | None, progress: ProgressCallback | None) -> list[Generation]:
        semantic = generate_semantic(self.semantic_model, ids, voice, options.semantic, generator, progress)
        if any(len(s) == 0 for s in semantic):
            warnings.warn("the semantic model stopped at once (end of speech first): the audio is empty",
                          stacklevel=3)
        coarse = generate_coarse(self.coarse_model, semantic, voice, options.coarse, generator, progress)
        fine = generate_fine(self.fine_model, coarse, voice, options.fine, generator, progress)
        return [Generation(self.decode(f), s, c, f) for s, c, f in zip(semantic, coarse, fine)]
