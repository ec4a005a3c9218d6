"""Whole texts: cut into chunks, spoken in one voice, batched, joined, and yielded as they finish.

The schedule (the same for `Bark.generate` and `Bark.stream`, so both give the same audio):
1. the first chunk of every text, batched with the other texts that share its voice; it is yielded
   at once, so a stream's first audio comes after about one chunk's generation;
2. with `speaker="first"`, the other chunks of a text in batches of `batch_size`, all with the
   text's voice, or with no voice given, with the first chunk's generation as the voice;
   with `speaker="continue"`, each chunk with the one before it as its voice, one at a time.
The engine is batch-invariant and every chunk samples from its own seeded stream, so a chunk's audio
does not depend on the batch it ran in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..constants import SAMPLE_RATE
from ..options import GenerationOptions, LongFormOptions
from ..pipeline.progress import ProgressCallback, Reporter
from ..pipeline.sampling import Stream
from ..results import AudioChunk, Generation, Segment
from ..voices import Voice
from .joins import join_piece

# (ids of several chunks, one voice per chunk, options, one seed per chunk, progress, texts=, long_form=) ->
# their generations: Bark.generate_chunks (the texts and long-form options let it check what it made).
GenerateChunks = Callable[..., list[Generation]]


def derive_seed(seed: int, index: int) -> int:
    """The documented seed of item `index` (a text of a list, or a chunk after the first) under `seed`:
    numpy.random.SeedSequence([seed, index]).generate_state(1, numpy.uint64)[0]."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


@dataclass
class TextJob:
    """One text, planned: its chunks (text and wordpiece ids), its voice and its seed."""

    index: int
    chunks: list[str]
    ids: list[list[int]]
    voice: Voice | None
    voice_key: object  # texts with equal keys share a voice, and so a batch
    seed: int | None
    offset: int = 0  # samples of joined audio yielded so far
    first: Generation | None = field(default=None, repr=False)

    def chunk_seed(self, chunk: int) -> int | None:
        if self.seed is None:
            return None
        return self.seed if chunk == 0 else derive_seed(self.seed, chunk)


def join(job: TextJob, chunk: int, generation: Generation, long_form: LongFormOptions) -> AudioChunk:
    """A chunk's generation as the next piece of its text's audio. A text of one chunk is left as
    generated; a longer one is trimmed, faded and paused (joins.py)."""
    total = len(job.chunks)
    if total == 1:
        piece, start, end = generation.audio, 0, len(generation.audio)
    else:
        piece, start, end = join_piece(generation.audio, first=chunk == 0, trim=long_form.trim,
                                       threshold_db=long_form.trim_db, fade_s=long_form.fade,
                                       pause_s=long_form.pause)
    segment = Segment(job.chunks[chunk], (job.offset + start) / SAMPLE_RATE, (job.offset + end) / SAMPLE_RATE,
                      generation.semantic_tokens, check=generation.check)
    job.offset += len(piece)
    return AudioChunk(piece, segment, chunk, total, generation)


def assemble(chunks: list[AudioChunk]) -> Generation:
    """A text's chunks, in order, as one Generation."""
    if len(chunks) == 1:
        g = chunks[0].generation
        return Generation(g.audio, g.semantic_tokens, g.coarse_tokens, g.fine_tokens, segments=(chunks[0].segment,))
    gens = [c.generation for c in chunks]
    return Generation(np.concatenate([c.audio for c in chunks]),
                      np.concatenate([g.semantic_tokens for g in gens]),
                      np.concatenate([g.coarse_tokens for g in gens], axis=1),  # (2, T_1 + T_2 + ...)
                      np.concatenate([g.fine_tokens for g in gens], axis=1),  # (8, T_1 + T_2 + ...)
                      segments=tuple(c.segment for c in chunks))


def as_voice(generation: Generation) -> Voice | None:
    """A chunk's generation as the voice of the chunks after it (None, with a warning, if it is empty)."""
    if len(generation.semantic_tokens) == 0 or generation.fine_tokens.shape[1] == 0:
        warnings.warn("a chunk came out empty, so it cannot be the voice of the next: that one has no voice",
                      stacklevel=4)
        return None
    return generation.to_voice()


def run(generate_chunks: GenerateChunks, jobs: list[TextJob], options: GenerationOptions, long_form: LongFormOptions,
        batch_size: int, progress: ProgressCallback | None) -> Iterator[tuple[int, AudioChunk]]:
    """(text index, chunk) for every chunk; each text's chunks come in order."""
    outer = Reporter(progress, "chunks", sum(len(j.chunks) for j in jobs), "chunk")

    def batches(items: list[tuple[TextJob, int]], voice_of) -> Iterator[tuple[TextJob, int, Generation]]:
        """Batches of `batch_size` chunks, whatever their voices (generate_chunks runs the semantic stage
        across voices, the others per voice), with the chunks of one voice side by side."""
        groups: dict[object, list[tuple[TextJob, int]]] = {}
        for job, chunk in items:
            groups.setdefault(voice_of(job)[0], []).append((job, chunk))
        ordered = [(item, voice_of(members[0][0])[1]) for members in groups.values() for item in members]
        for first in range(0, len(ordered), batch_size):
            batch = ordered[first: first + batch_size]
            gens = generate_chunks([job.ids[c] for (job, c), _ in batch], [voice for _, voice in batch], options,
                                   [job.chunk_seed(c) for (job, c), _ in batch], progress,
                                   texts=[job.chunks[c] for (job, c), _ in batch], long_form=long_form)
            for ((job, chunk), _), generation in zip(batch, gens):
                yield job, chunk, generation

    for job, chunk, generation in batches([(j, 0) for j in jobs], lambda j: (j.voice_key, j.voice)):
        job.first = generation
        outer.advance()
        yield job.index, join(job, 0, generation, long_form)
    if long_form.speaker == "continue":
        for job in jobs:
            previous = job.first
            for chunk in range(1, len(job.chunks)):
                previous = generate_chunks([job.ids[chunk]], as_voice(previous), options, [job.chunk_seed(chunk)],
                                           progress, texts=[job.chunks[chunk]], long_form=long_form)[0]
                outer.advance()
                yield job.index, join(job, chunk, previous, long_form)
        return
    voices = {j.index: j.voice if j.voice is not None else as_voice(j.first) for j in jobs if len(j.chunks) > 1}
    rest = [(j, c) for j in jobs for c in range(1, len(j.chunks))]
    for job, chunk, generation in batches(rest, lambda j: (j.voice_key if j.voice is not None else ("first", j.index),
                                                           voices[j.index])):
        outer.advance()
        yield job.index, join(job, chunk, generation, long_form)


def chunk_streams(seeds: list[int | None]) -> list[Stream]:
    """One random stream per chunk (pipeline/sampling.py): its seed, or one drawn from torch's generator."""
    return [Stream(s) for s in seeds]
