"""`Bark`: the engine object that holds the four models and runs text -> semantic -> coarse -> fine -> audio."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Iterator

import numpy as np
import torch

from .backends import BackendReport, select
from .backends.base import Backend, Models
from .backends.cuda import deterministic_convolutions
from .backends.cuda.offload import Offload
from .constants import CODEBOOK_SIZE, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS, SEMANTIC_VOCAB_SIZE
from .errors import BadInput
from .clone.cloner import VoiceCloner
from .loading.layouts import DEFAULT_CODEC, Parts, load_parts
from .loading.vocos import DEFAULT_VOCOS, load_vocos
from .models.vocos import Vocos
from .options import (DECODERS, CloneOptions, CoarseOptions, EngineOptions, FineOptions, GenerationOptions, LongFormOptions,
                      SemanticOptions, check_choice, check_number, check_seed, make_options)
from .pipeline.coarse import generate_coarse
from .pipeline.fine import generate_fine
from .pipeline.progress import ProgressCallback
from .pipeline.sampling import Stream
from .pipeline.semantic import Voices, generate_semantic, row_voices
from .longform import dialogue, narrate
from .longform.verify import Transcriber, Verifier, generate_checked
from .results import AudioChunk, Generation
from .longform.split import chunk_text
from .text.tokenizer import fit_text_window, normalize_text
from .voices import Voice, VoiceLike, check_tokens, resolve_voice


def usable_threads(threads: int) -> int:
    """`threads`, capped (with a warning) at the cores this process may run on: more threads than cores
    only make the C kernels' and torch's workers wait for each other."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > cores:
        warnings.warn(f"threads {threads} is more than the {cores} cores this process may use; using {cores}",
                      stacklevel=3)
        return cores
    return threads


class Bark:
    """Bark text-to-speech. Make one with `Bark.from_pretrained(...)`; it holds no global state."""

    def __init__(self, parts: Parts, options: EngineOptions | None = None, *, offload: Offload | None = None,
                 backend: Backend | None = None, vocos: Vocos | str | os.PathLike | None = None,
                 transcriber: Transcriber | None = None,
                 asr: str | None = None, clone: CloneOptions | None = None, clone_hub: dict | None = None):
        """`offload` and `backend` replace what `options` would make (the tests run a CUDA backend's code on
        the CPU this way); `vocos`, the Vocos decoder of decoder="vocos" (a model, or where to load it from
        at first use: a folder or hub id; default charactr/vocos-encodec-24khz)."""
        self.options = options or EngineOptions()  # the parts must have been loaded for its device and dtype
        self._vocos, self._vocos_source = (vocos, None) if isinstance(vocos, Vocos) else (None, vocos or DEFAULT_VOCOS)
        if self._vocos is not None:
            self._vocos = self._vocos.to(self.options.torch_device)
        # verify="asr": `transcriber`, else Whisper from `asr` (a hub id or folder; default by language), loaded
        # at first use, once per model
        self.transcriber, self.asr_model, self._whispers = transcriber, asr, {}
        # voices from recordings: HuBERT, the quantizer and EnCodec's encoder, loaded at first use
        # (`clone_hub`: where the encoder comes from, `codec`, and the hub settings)
        self.clone_options, self._clone_hub, self._cloner = clone or CloneOptions(), clone_hub or {}, None
        self._clone_lock = threading.Lock()  # the server may clone from several threads
        self.semantic_model, self.coarse_model, self.fine_model = parts.semantic, parts.coarse, parts.fine
        self.codec, self.tokenizer, self.voice_library = parts.codec, parts.tokenizer, parts.voices
        self.source = parts.source
        # the backend prepares the models in place, through their seams; its report says what it chose
        self.backend: BackendReport = select(self.options, Models(parts.semantic, parts.coarse, parts.fine),
                                             backend)
        if offload is None and self.options.offload:  # the GPTs were loaded on the CPU, the codec on the device
            offload = Offload({"semantic": parts.semantic, "coarse": parts.coarse, "fine": parts.fine}, self.device)
        self._offload = offload  # moves each GPT to the device for its stage only (backends/cuda/offload.py)

    def _stage(self, name: str):
        """The context a stage runs in: with offload, its model is on the device for that time."""
        return self._offload.stage(name) if self._offload is not None else contextlib.nullcontext()

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
                        vocos: str | os.PathLike | None = None, asr: str | os.PathLike | None = None,
                        hubert: str | os.PathLike | None = None, quantizer: str | os.PathLike | None = None,
                        **engine_options) -> "Bark":
        """Load from a hub id (`suno/bark-small`, `suno/bark`), a folder in the hub layout, or a folder of
        Suno's original `.pt` files (EnCodec from `codec`: a `.th` file, a folder or hub id; default
        `facebook/encodec_24khz`). `tokenizer` overrides the tokenizer (a file, folder or hub id).

        Engine options: `options=EngineOptions(...)`, or its fields as keywords: `device`, `dtype`
        (float32 is the exact mode), `quantize` ("int8": the int8 fast mode, CPU), `cpu_kernel`
        ("auto", "c", "onednn", "plain"), `backend` ("auto", "cpu", "cuda", "torch"), `threads`, `attention`,
        `offload` and `compile`. `vocos=`: where decoder="vocos" loads Vocos from (a folder or hub id).
        `tts.backend` reports what was chosen. `hubert=` and `quantizer=`: the models `voice_from_audio` uses
        (CloneOptions; EnCodec's encoder comes from this checkpoint, or `codec`)."""
        options = make_options(EngineOptions, options, engine_options, "options")
        if options.threads is not None:
            torch.set_num_threads(usable_threads(options.threads))
        load_on = torch.device("cpu") if options.offload else options.torch_device  # offload: GPTs stay in CPU memory
        parts = load_parts(source, load_on, options.torch_dtype, tokenizer=tokenizer, codec=codec,
                           revision=revision, cache_dir=os.fspath(cache_dir) if cache_dir else None,
                           local_files_only=local_files_only)
        parts.codec.to(options.torch_device)  # the EnCodec decoder (7.4M parameters) always runs on the device
        clone = CloneOptions(**{k: os.fspath(v) for k, v in (("hubert", hubert), ("quantizer", quantizer))
                                if v is not None})
        clone_hub = {"codec": os.fspath(codec or source), "cache_dir": os.fspath(cache_dir) if cache_dir else None,
                     "local_files_only": local_files_only}
        return cls(parts, options, vocos=vocos, asr=os.fspath(asr) if asr is not None else None, clone=clone,
                   clone_hub=clone_hub)

    # ------------------------------------------------------------ voices

    def voices(self) -> list[str]:
        """Names of the checkpoint's voice presets."""
        return self.voice_library.names() if self.voice_library else []

    def load_voice(self, voice: VoiceLike) -> Voice | None:
        try:
            return resolve_voice(voice, self.voice_library)
        except BadInput as e:
            e.param = e.param or "voice"
            raise

    def cloner(self) -> VoiceCloner:
        """HuBERT, the quantizer and EnCodec's encoder (loaded at first use), on this engine's device."""
        with self._clone_lock:
            if self._cloner is None:
                hub = dict(self._clone_hub)
                self._cloner = VoiceCloner.from_pretrained(hubert=self.clone_options.hubert,
                                                           quantizer=self.clone_options.quantizer,
                                                           codec=hub.pop("codec", DEFAULT_CODEC), device=self.device,
                                                           **hub)
            return self._cloner

    def voice_from_audio(self, audio, sample_rate: int | None = None, *, quantizer: str | os.PathLike | None = None,
                         progress: ProgressCallback | None = None) -> Voice:
        """A voice made from a recording of one speaker (5-15 s of clean speech works best; only its end is
        used): a path (wav, flac, ogg, mp3, m4a ...), an audio file's bytes, an array with its
        `sample_rate`, or a `clone.audio.Clip` already read. `quantizer` overrides the engine's
        (CloneOptions). The Voice works wherever a voice does; `voice.save(path)` writes it as an .npz."""
        try:
            return self.cloner().clone(audio, sample_rate, quantizer=quantizer, progress=progress)
        except BadInput as e:
            e.param = e.param or "audio"
            raise

    # ------------------------------------------------------------ stages

    def _streams(self, seed: int | None) -> list[Stream]:
        return narrate.chunk_streams(self._seeds(seed, 1, True))

    def tokenize(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise BadInput(f"text {text[:40]!r} has nothing to speak: after removing control and zero-width "
                           f"characters no words are left", "text")
        return fit_text_window(ids)

    def text_to_semantic(self, text: str, voice: VoiceLike = None, *, seed: int | None = None,
                         progress: ProgressCallback | None = None, **options) -> np.ndarray:
        """Semantic tokens (n,) for `text`. Options: the fields of `SemanticOptions`."""
        options = make_options(SemanticOptions, None, options, "options")
        ids = self.tokenize(text)
        with self._stage("semantic"):
            return generate_semantic(self.semantic_model, [ids], self.load_voice(voice), options,
                                     self._streams(seed), progress)[0]

    def semantic_to_coarse(self, semantic, voice: VoiceLike = None, *, seed: int | None = None,
                           progress: ProgressCallback | None = None, **options) -> np.ndarray:
        """Coarse codes (2, T) for semantic tokens (n,). Options: the fields of `CoarseOptions`."""
        options = make_options(CoarseOptions, None, options, "options")
        semantic = check_tokens("semantic tokens", semantic, None, SEMANTIC_VOCAB_SIZE, allow_empty=True)
        with self._stage("coarse"):
            return generate_coarse(self.coarse_model, [semantic], self.load_voice(voice), options,
                                   self._streams(seed), progress)[0]

    def coarse_to_fine(self, coarse, voice: VoiceLike = None, *, seed: int | None = None,
                       progress: ProgressCallback | None = None, **options) -> np.ndarray:
        """Fine codes (8, T) for coarse codes (2, T). Options: the fields of `FineOptions`."""
        options = make_options(FineOptions, None, options, "options")
        coarse = check_tokens("coarse tokens", coarse, N_COARSE_CODEBOOKS, CODEBOOK_SIZE, allow_empty=True)
        with self._stage("fine"):
            return generate_fine(self.fine_model, [coarse], self.load_voice(voice), options,
                                 self._streams(seed), progress)[0]

    @torch.inference_mode()
    def decode(self, fine, decoder: str = "encodec") -> np.ndarray:
        """Fine codes (8, T) -> float32 waveform (T * 320,) at 24 kHz, by EnCodec's decoder or Vocos."""
        fine = check_tokens("fine tokens", fine, N_FINE_CODEBOOKS, CODEBOOK_SIZE, allow_empty=True)
        check_choice("decoder", decoder, DECODERS)
        if fine.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        codes = torch.from_numpy(fine).to(self.codec.quantizer.layers[0].codebook.embed.device)[None]  # (1, 8, T)
        model = self.vocos() if decoder == "vocos" else self.codec
        with deterministic_convolutions(self.device):  # the same codes, the same audio bits, call after call
            return model(codes)[0].float().cpu().numpy()

    def vocos(self) -> Vocos:
        """The Vocos decoder, loaded at first use (from `vocos=` of from_pretrained, else the hub's)."""
        if self._vocos is None:
            self._vocos = load_vocos(self._vocos_source, self.device)
        return self._vocos

    # ------------------------------------------------------------ end to end

    def generate(self, text: str | list[str], voice: VoiceLike | list[VoiceLike] = None, *,
                 options: GenerationOptions | None = None, long_form: LongFormOptions | None = None,
                 seed: int | list[int] | None = None, batch_size: int = 16, progress: ProgressCallback | None = None,
                 **option_values) -> Generation | list[Generation]:
        """Text of any length (or a list of texts) -> Generation(s).

        Options: the fields of GenerationOptions and of LongFormOptions as keywords, or `options=` and
        `long_form=`. A text longer than one generation is cut into chunks spoken in one voice and
        joined (narrate.py). Chunks and texts that share a voice run through every stage as a batch,
        `batch_size` at a time. `seed`: one integer (a list of texts: text i gets
        `narrate.derive_seed(seed, i)`), or one seed per text. `progress` is called as each stage and
        each chunk advances (pipeline/progress.py).
        """
        single = not isinstance(text, (list, tuple))
        jobs, options, long_form = self.plan(text, voice, seed, batch_size, options, long_form, option_values)
        chunks: dict[int, list[AudioChunk]] = {job.index: [] for job in jobs}
        for index, chunk in narrate.run(self.generate_chunks, jobs, options, long_form, batch_size, progress):
            chunks[index].append(chunk)
        results = [narrate.assemble(chunks[job.index]) for job in jobs]
        return results[0] if single else results

    def stream(self, text: str, voice: VoiceLike = None, *, options: GenerationOptions | None = None,
               long_form: LongFormOptions | None = None, seed: int | None = None, batch_size: int = 16,
               progress: ProgressCallback | None = None, **option_values) -> Iterator[AudioChunk]:
        """Like `generate` for one text, but yields its AudioChunks in order as each is ready: the first
        after about one chunk's generation. Their audio, concatenated, is `generate(...)`'s, sample for
        sample. Everything is checked before this returns."""
        if not isinstance(text, str):
            raise BadInput(f"stream speaks one text: give a string, got {type(text).__name__}")
        jobs, options, long_form = self.plan(text, voice, seed, batch_size, options, long_form, option_values)
        return (chunk for _, chunk in narrate.run(self.generate_chunks, jobs, options, long_form, batch_size, progress))

    def dialogue(self, script, speakers: dict | None = None, *, seed: int | None = None, turn_pause: float = 0.5,
                 options: GenerationOptions | None = None, long_form: LongFormOptions | None = None,
                 batch_size: int = 16, progress: ProgressCallback | None = None, **option_values) -> Generation:
        """A script of several speakers as one Generation (see `stream_dialogue`)."""
        return narrate.assemble(list(self.stream_dialogue(
            script, speakers, seed=seed, turn_pause=turn_pause, options=options, long_form=long_form,
            batch_size=batch_size, progress=progress, **option_values)))

    def stream_dialogue(self, script, speakers: dict | None = None, *, seed: int | None = None,
                        turn_pause: float = 0.5, options: GenerationOptions | None = None,
                        long_form: LongFormOptions | None = None, batch_size: int = 16,
                        progress: ProgressCallback | None = None, **option_values) -> Iterator[AudioChunk]:
        """A script (text with `NAME: line` per turn, or a list of {"speaker", "text"}) spoken turn by turn,
        each in its speaker's voice: `speakers` maps a name to a voice (None: one of its own; without
        `speakers`, every speaker gets one of its own). `turn_pause` seconds of silence between turns. Yields
        AudioChunks in order, their segments naming the speaker; turn k is seeded `derive_seed(seed, k)`.
        Everything is checked before this returns (longform/dialogue.py)."""
        turns = dialogue.parse_script(script)
        check_number("turn_pause", turn_pause, low=0, high=10)
        language = option_values.get("language", long_form.language if long_form is not None else "en")
        voices = dialogue.cast(turns, speakers, self.voices(), language if isinstance(language, str) else "en")
        jobs, options, long_form = self.plan([t.text for t in turns], [voices[t.speaker] for t in turns], seed,
                                             batch_size, options, long_form, option_values)
        items = narrate.run(self.generate_chunks, jobs, options, long_form, batch_size, progress)
        return dialogue.in_order(items, jobs, turns, turn_pause)

    def split(self, text: str, long_form: LongFormOptions | None = None, **long_form_options) -> list[str]:
        """The chunks `generate` and `stream` would speak `text` in (see LongFormOptions)."""
        long_form = make_options(LongFormOptions, long_form, long_form_options, "long_form")
        normalize_text(text)  # a clear error for a non-string or empty text, before it is cut
        return chunk_text(text, lambda piece: len(self.tokenizer.encode(piece)), max_tokens=long_form.max_chunk_tokens,
                          max_seconds=long_form.max_chunk_seconds, language=long_form.language,
                          first_seconds=long_form.first_chunk_seconds)

    def plan(self, text, voice, seed, batch_size, options, long_form, option_values: dict):
        """Check everything (options, texts, voices, seeds) and cut the texts into narrate.TextJobs; nothing
        is generated here. `generate`, `stream` and the server's scheduler run these jobs."""
        long_form_fields = LongFormOptions.__dataclass_fields__
        unknown = set(option_values) - set(GenerationOptions.__dataclass_fields__) - set(long_form_fields)
        if unknown:
            raise BadInput(f"unknown option(s) {', '.join(sorted(unknown))}; accepted: the fields of "
                           f"GenerationOptions ({', '.join(GenerationOptions.__dataclass_fields__)}) and of "
                           f"LongFormOptions ({', '.join(long_form_fields)})")
        long_form = make_options(LongFormOptions, long_form,
                                 {k: v for k, v in option_values.items() if k in long_form_fields}, "long_form")
        options = make_options(GenerationOptions, options,
                               {k: v for k, v in option_values.items() if k not in long_form_fields}, "options")
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
        seeds = self._seeds(seed, len(texts), single)
        loaded: dict[object, Voice | None] = {}  # a voice (by path, or by object) -> the loaded voice
        jobs = []
        for i, (t, v) in enumerate(zip(texts, voices)):
            key = os.fspath(v) if isinstance(v, (str, os.PathLike)) else id(v)
            if key not in loaded:
                loaded[key] = self.load_voice(v)
            chunks = self.split(t, long_form)
            if not chunks:
                raise BadInput(f"text {t[:40]!r} has nothing to speak", "text")
            jobs.append(narrate.TextJob(i, chunks, [self.tokenize(c) for c in chunks], loaded[key], key, seeds[i]))
        return jobs, options, long_form

    @staticmethod
    def _seeds(seed, n: int, single: bool) -> list[int | None]:
        if isinstance(seed, (list, tuple)):
            if single or len(seed) != n:
                raise BadInput(f"a list of seeds needs one seed per text: {len(seed)} seeds for {n} texts", "seed")
            return [check_seed(s) for s in seed]
        seed = check_seed(seed)
        if seed is None or single:
            return [seed] * n
        return [narrate.derive_seed(seed, i) for i in range(n)]

    def generate_chunks(self, ids: list[list[int]], voice: Voices, options: GenerationOptions,
                        seeds: list[int | None], progress: ProgressCallback | None = None, *,
                        texts: list[str] | None = None, long_form: LongFormOptions | None = None) -> list[Generation]:
        """Wordpiece ids of several texts, each fitting one generation, through every stage as one batch;
        text i samples from its own stream seeded with `seeds[i]`.

        `voice`: one voice for all, or a list with one per text. The semantic stage runs every text in
        one batch whatever its voice (its prompt has one length for every voice); the coarse and fine
        stages run one batch per voice, texts sharing a voice object sharing a batch.

        With `long_form.verify` on and the chunks' `texts`, each chunk is checked and generated again when
        it went wrong (longform/verify.py); each Generation then carries its `check`."""
        if long_form is None or long_form.verify == "off" or texts is None:
            return self._generate_chunks(ids, voice, options, seeds, progress)
        verifier = Verifier(long_form.verify, long_form.max_wer, long_form.duration_ratio, long_form.language,
                            self._transcriber, long_form.trim_db)
        return generate_checked(self._generate_chunks, texts, ids, row_voices(voice, len(ids)), options, seeds,
                                progress, verifier, long_form.max_attempts)

    def _transcriber(self, language: str) -> Transcriber:
        """The speech recogniser of verify="asr": the one given, else Whisper (`asr` of from_pretrained, or
        the default for `language`), loaded at first use."""
        if self.transcriber is not None:
            return self.transcriber
        from .longform.asr import WhisperTranscriber, default_asr
        source = self.asr_model or default_asr(language)
        if source not in self._whispers:
            self._whispers[source] = WhisperTranscriber(source, self.device)
        return self._whispers[source]

    def _generate_chunks(self, ids: list[list[int]], voice: Voices, options: GenerationOptions,
                         seeds: list[int | None], progress: ProgressCallback | None = None) -> list[Generation]:
        voices = row_voices(voice, len(ids))
        streams = narrate.chunk_streams(seeds)
        with self._stage("semantic"):
            semantic = generate_semantic(self.semantic_model, ids, voices, options.semantic, streams, progress)
        if any(len(s) == 0 for s in semantic):
            warnings.warn("the semantic model stopped at once (end of speech first): the audio is empty",
                          stacklevel=3)
        groups: dict[int, list[int]] = {}  # a voice object's id -> its rows
        for row, v in enumerate(voices):
            groups.setdefault(id(v), []).append(row)
        results: list[Generation | None] = [None] * len(ids)
        for rows in groups.values():
            v, gens = voices[rows[0]], [streams[i] for i in rows]
            with self._stage("coarse"):
                coarse = generate_coarse(self.coarse_model, [semantic[i] for i in rows], v, options.coarse, gens,
                                         progress)
            with self._stage("fine"):
                fine = generate_fine(self.fine_model, coarse, v, options.fine, gens, progress)
            for i, c, f in zip(rows, coarse, fine):
                results[i] = Generation(self.decode(f, options.decoder), semantic[i], c, f)
        return results
