"""Whole texts -> chunks that fit one Bark generation.

Sentences come from `pysbd` (rule-based, with abbreviation, decimal, quote and ellipsis rules for
many languages; Bark's languages without pysbd rules use its English rules). Sentences are then
packed, in order, into chunks of at most `max_tokens` wordpieces and an estimated `max_seconds` of
speech. A sentence too long for one chunk is split at clause punctuation, then between words;
only a single word longer than a whole chunk is cut inside. Bracketed cues (`[laughs]`), `♪ ... ♪`
lyrics and speaker tags are never cut.

Linear in the text: lines are segmented one at a time, and a line longer than LINE_LIMIT
characters is first cut at sentence-final punctuation.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

import pysbd

PYSBD_LANGUAGES = set(pysbd.languages.LANGUAGE_CODES)
NO_SPACE_LANGUAGES = ("ja", "zh")  # sentences are joined without a space
LINE_LIMIT = 5_000  # characters handed to the segmenter at once (its rules are regexes over the whole line)

# Speaking rates for the duration estimate: ~160 words a minute is a steady narration pace (2.7 words/s);
# Chinese and Japanese run at ~6 characters (syllables) a second.
WORDS_PER_SECOND = 2.7
CJK_CHARS_PER_SECOND = 6.0
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
WORD = re.compile(r"\[[^\]\n]*\]|♪[^♪\n]*♪|\S+")  # a cue and a lyric span count (and stay) as one word
CLAUSE_END = re.compile(r"(?<=[,;—–、，；])\s*|(?<=[,;])(?=\S)")  # after clause punctuation (not ':': speaker tags)
PUNCTUATION_ONLY = re.compile(r"[\W_]", re.UNICODE)  # what is left of a piece with no letters or digits: ""
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def split_sentences(text: str, language: str = "en") -> Iterator[str]:
    """The sentences of `text`, in order, whitespace-normalised."""
    segmenter = pysbd.Segmenter(language=language if language in PYSBD_LANGUAGES else "en", clean=False)
    for line in text.splitlines():
        for part in _bounded(line):
            for sentence in segmenter.segment(part):
                sentence = " ".join(sentence.split())
                if sentence:
                    yield sentence


def _bounded(line: str) -> Iterator[str]:
    """`line` in pieces of about LINE_LIMIT characters, cut after sentence-final punctuation when possible."""
    while len(line) > LINE_LIMIT:
        cuts = [m.end() for m in SENTENCE_END.finditer(line, 0, LINE_LIMIT)]
        cut = cuts[-1] if cuts else (line.rfind(" ", 0, LINE_LIMIT) + 1 or LINE_LIMIT)
        yield line[:cut]
        line = line[cut:]
    yield line


def estimate_seconds(text: str) -> float:
    """A rough speech duration: CJK characters at CJK_CHARS_PER_SECOND, other words at WORDS_PER_SECOND."""
    n_cjk = len(CJK.findall(text))
    n_words = len(WORD.findall(CJK.sub(" ", text)))
    return n_words / WORDS_PER_SECOND + n_cjk / CJK_CHARS_PER_SECOND


def chunk_text(text: str, count_tokens: Callable[[str], int], *, max_tokens: int = 256, max_seconds: float = 13.0,
               language: str = "en") -> list[str]:
    """`text` as chunks that each fit one generation (see the module docstring)."""
    joiner = "" if language in NO_SPACE_LANGUAGES else " "

    def fits(piece: str) -> bool:
        return count_tokens(piece) <= max_tokens and estimate_seconds(piece) <= max_seconds

    chunks, current, current_tokens, current_seconds = [], "", 0, 0.0
    for sentence in split_sentences(text, language):
        for piece in ([sentence] if fits(sentence) else _split_long(sentence, fits, joiner)):
            tokens, seconds = count_tokens(piece), estimate_seconds(piece)
            if current and (current_tokens + tokens > max_tokens or current_seconds + seconds > max_seconds):
                chunks.append(current)
                current, current_tokens, current_seconds = "", 0, 0.0
            current = current + joiner + piece if current else piece
            current_tokens, current_seconds = current_tokens + tokens, current_seconds + seconds
    if current:
        chunks.append(current)
    return chunks


def _split_long(sentence: str, fits: Callable[[str], bool], joiner: str) -> list[str]:
    """An overlong sentence in pieces that fit: at clause punctuation, else between words, else (one word
    longer than a chunk, or a CJK run without spaces) between characters."""
    pieces = []
    for clause in (c.strip() for c in CLAUSE_END.split(sentence) if c.strip()):
        if fits(clause):
            pieces.append(clause)
            continue
        current = ""
        for word in WORD.findall(clause):
            for k, part in enumerate([word] if fits(word) else _cut(word, fits)):
                sep = "" if k else " "  # the parts of one word are joined back without a space
                candidate = current + sep + part if current else part
                if current and not fits(candidate):
                    pieces.append(current)
                    candidate = part
                current = candidate
        if current:
            pieces.append(current)
    return _merge(pieces, fits, joiner)


def _cut(word: str, fits: Callable[[str], bool]) -> list[str]:
    """A word that fits no chunk, in the longest runs of characters that do."""
    parts, current = [], ""
    for char in word:
        if current and not fits(current + char):
            parts.append(current)
            current = ""
        current += char
    return parts + [current] if current else parts


def _merge(pieces: list[str], fits: Callable[[str], bool], joiner: str) -> list[str]:
    """Join neighbouring pieces back while they fit, so that clauses are not spoken one by one; a piece of
    punctuation alone always joins the one before it."""
    merged: list[str] = []
    for piece in pieces:
        if merged and (fits(merged[-1] + joiner + piece) or not PUNCTUATION_ONLY.sub("", piece)):
            merged[-1] = merged[-1] + joiner + piece
        else:
            merged.append(piece)
    return merged
