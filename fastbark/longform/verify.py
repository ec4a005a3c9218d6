"""Narration that checks itself: each generated chunk is judged, and a chunk that went wrong is generated
again with the next seed of a documented sequence, up to `max_attempts`; the best attempt is kept.

Two checks (`LongFormOptions.verify`):
- "duration" (no model, no extra dependency): the chunk's speech, its silent edges trimmed, must last
  between 1/duration_ratio and duration_ratio times what its words need (split.estimate_seconds). It
  catches long silences, babbling tails and chunks cut short.
- "asr": the duration check, and a speech recogniser's transcript (`Transcriber`; Whisper by default,
  asr.py) must match the chunk's text with a word error rate of at most `max_wer`, after `normalize`
  (case and punctuation dropped, numerals spelled out; cues like `[laughs]` and `♪` lyrics removed).

Attempt a (1, 2, ...) of a chunk seeded s uses `retry_seed(s, a)` = derive_seed(s, 2**32 + a), so the
whole narration stays a function of the seed: the same alone, batched and streamed. The best attempt is
the first that passes, else the one with the lowest word error rate (then the duration ratio nearest 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import numpy as np

from ..constants import SAMPLE_RATE
from ..results import Generation
from .joins import speech_bounds
from .narrate import derive_seed
from .split import estimate_seconds

RETRY_OFFSET = 2**32  # retry seeds live far from the indices derive_seed gives texts and chunks
CUE = re.compile(r"\[[^\]]*\]|♪[^♪]*♪?")
NOT_WORD = re.compile(r"[^\w\s']|_")
NUMERAL = re.compile(r"\d+(?:[.,]\d+)?")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000,000 -> 1000000


class Transcriber(Protocol):
    """A speech recogniser: 24 kHz mono float32 audio -> its text."""

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str: ...


@dataclass(frozen=True)
class Check:
    """A chunk's verdict, kept on its Generation and its Segment."""

    passed: bool
    duration_ratio: float  # the chunk's speech over what its words need
    wer: float | None = None  # the word error rate of the transcript ("asr" only)
    attempts: int = 1
    transcript: str | None = None


def retry_seed(seed: int | None, attempt: int) -> int | None:
    """The seed of attempt `attempt` (>= 1) of a chunk seeded `seed` (None: unseeded, a random retry)."""
    return None if seed is None else derive_seed(seed, RETRY_OFFSET + attempt)


def spell_numbers(text: str, language: str = "en") -> str:
    """Numerals as words in `language` (num2words, of the verify extra): "42" and "forty-two" then compare
    equal. Thousands separators ("1,000") are dropped first; a numeral num2words cannot say stays."""
    try:
        from num2words import num2words
    except ImportError:
        return text

    def spell(match: re.Match) -> str:
        numeral = match.group()
        try:
            value = float(numeral.replace(",", ".")) if any(c in numeral for c in ".,") else int(numeral)
            return f" {num2words(value, lang=language)} "
        except (NotImplementedError, OverflowError, ValueError, KeyError):
            return numeral
    return NUMERAL.sub(spell, THOUSANDS.sub("", text))


def normalize(text: str, language: str = "en") -> str:
    """Text as words compare: cues and lyrics dropped, numerals spelled out, punctuation removed, lower case,
    spaces collapsed."""
    return " ".join(NOT_WORD.sub(" ", spell_numbers(CUE.sub(" ", text), language)).lower().split())


def word_error_rate(reference: str, hypothesis: str, language: str = "en") -> float:
    import jiwer
    reference, hypothesis = normalize(reference, language), normalize(hypothesis, language)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return float(jiwer.wer(reference, hypothesis or "<nothing>"))


class Verifier:
    def __init__(self, mode: str, max_wer: float, duration_ratio: float, language: str,
                 transcriber: Callable[[str], Transcriber] | None = None, trim_db: float = -40.0):
        self.mode, self.max_wer, self.duration_ratio, self.language = mode, max_wer, duration_ratio, language
        self._transcriber, self.trim_db = transcriber, trim_db

    def judge(self, text: str, generation: Generation) -> Check:
        start, end = speech_bounds(generation.audio, self.trim_db)
        expected = max(estimate_seconds(text), 0.3)  # a word or two: at least a syllable's time
        ratio = (end - start) / SAMPLE_RATE / expected
        passed = 1 / self.duration_ratio <= ratio <= self.duration_ratio
        if self.mode != "asr":
            return Check(passed, ratio)
        transcript = self._transcriber(self.language).transcribe(generation.audio, SAMPLE_RATE, self.language)
        wer = word_error_rate(text, transcript, self.language)
        return Check(passed and wer <= self.max_wer, ratio, wer, transcript=transcript)


def _rank(check: Check) -> tuple:
    """Smaller is better: passing first, then the word error rate, then the duration ratio's distance from 1."""
    return (not check.passed, check.wer if check.wer is not None else 0.0, abs(math.log(max(check.duration_ratio,
                                                                                            1e-6))))


def generate_checked(generate, texts: list[str], ids: list[list[int]], voices: list, options,
                     seeds: list[int | None], progress, verifier: Verifier, max_attempts: int) -> list[Generation]:
    """`generate(ids, voices, options, seeds, progress)` (Bark.generate_chunks), then every failed chunk again
    with its next retry seed, all failed chunks of an attempt in one batch, until each passes or has had
    `max_attempts`. Each returned Generation carries its `check`."""
    gens = generate(ids, voices, options, seeds, progress)
    best = [replace(g, check=verifier.judge(t, g)) for g, t in zip(gens, texts)]
    for attempt in range(1, max_attempts):
        failed = [i for i, g in enumerate(best) if not g.check.passed]
        if not failed:
            break
        again = generate([ids[i] for i in failed], [voices[i] for i in failed], options,
                         [retry_seed(seeds[i], attempt) for i in failed], progress)
        for i, g in zip(failed, again):
            check = verifier.judge(texts[i], g)
            keep = (g, check) if _rank(check) < _rank(best[i].check) else (best[i], best[i].check)
            best[i] = replace(keep[0], check=replace(keep[1], attempts=attempt + 1))
    return best
