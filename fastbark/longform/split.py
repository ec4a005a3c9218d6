"""Whole texts -> chunks that fit one Bark generation.

Sentences come from `pysbd` (rule-based, with abbreviation, decimal, quote and ellipsis rules for
many languages; Bark's languages without pysbd rules use its English rules). Sentences are then
packed, in order, into chunks of at most `max_tokens` wordpieces and an estimated `max_seconds` of
speech. A sentence too long for one chunk is split at clause punctuation, then between words;
only a single word longer than a whole chunk is cut inside. Bracketed cues (`[laughs]`), `♪ ... ♪`
lyrics and speaker tags are never cut.

Linear in the text, whatever it holds: lines are segmented one at a time (a line longer than
LINE_LIMIT characters is first cut at sentence-final punctuation); every piece is measured once and
pieces are packed by adding their sizes; a word longer than a chunk is cut by doubling and bisecting.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

NO_SPACE_LANGUAGES = ("ja", "zh")  # sentences are joined without a space
LINE_LIMIT = 5_000  # characters handed to the segmenter at once (its rules are regexes over the whole line)

# Speaking rates for the duration estimate: ~160 words a minute is a steady narration pace (2.7 words/s);
# Chinese and Japanese run at ~6 characters (syllables) a second.
WORDS_PER_SECOND = 2.7
CJK_CHARS_PER_SECOND = 6.0
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# a cue and a lyric span count (and stay) as one word; a cue holds no '[' (so "[[[[..." is matched in linear time)
WORD = re.compile(r"\[[^\[\]\n]*\]|♪[^♪\n]*♪|\S+")
CLAUSE_END = re.compile(r"(?<=[,;—–、，；])\s*|(?<=[,;])(?=\S)")  # after clause punctuation (not ':': speaker tags)
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _segmenter(language: str):
    """A new pysbd segmenter for `language` (its English rules where pysbd has none; one per call, as it keeps
    the text it works on), imported on first use: a GPU machine without pysbd still runs short texts."""
    import pysbd
    return pysbd.Segmenter(language=language if language in pysbd.languages.LANGUAGE_CODES else "en", clean=False)


def split_sentences(text: str, language: str = "en") -> Iterator[str]:
    """The sentences of `text`, in order, whitespace-normalised."""
    segmenter = _segmenter(language)
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


Size = tuple[int, float]  # (wordpieces, estimated seconds)
Piece = tuple[str, Size, str]  # (text, its size, the separator that joins it to the piece before)


def chunk_text(text: str, count_tokens: Callable[[str], int], *, max_tokens: int = 256, max_seconds: float = 13.0,
               language: str = "en", first_seconds: float | None = None) -> list[str]:
    """`text` as chunks that each fit one generation (see the module docstring). With `first_seconds`, the
    first chunk is only as long as that (estimated): whole sentences, else the first sentence's leading
    clauses, and at least one clause; it is cut at a clause or sentence boundary, never inside a word."""
    joiner = "" if language in NO_SPACE_LANGUAGES else " "

    def measure(piece: str) -> Size:
        return count_tokens(piece), estimate_seconds(piece)

    def fits(size: Size) -> bool:
        return size[0] <= max_tokens and size[1] <= max_seconds

    pieces: list[Piece] = []
    for sentence in split_sentences(text, language):
        size = measure(sentence)
        pieces += [(sentence, size, joiner)] if fits(size) else _split_long(sentence, measure, fits, joiner)
    if first_seconds and pieces:
        head, pieces = _first_chunk(pieces, first_seconds, measure, joiner)
        return [head] + [piece for piece, _, _ in _pack(pieces, fits)]
    return [piece for piece, _, _ in _pack(pieces, fits)]


def _first_chunk(pieces: list[Piece], seconds: float, measure: Callable[[str], Size],
                 joiner: str) -> tuple[str, list[Piece]]:
    """A short first chunk taken from the front of `pieces` (each a sentence, or part of an overlong one),
    and the pieces left. Whole pieces while they fit in `seconds`; if not even the first does, its leading
    clauses (at least one), the rest of it staying a piece of its own."""
    taken, total = [], 0.0
    while pieces and total + pieces[0][1][1] <= seconds:
        taken.append(pieces[0])
        total += pieces[0][1][1]
        pieces = pieces[1:]
    if not taken:
        first, _, sep = pieces[0]
        clauses = [c.strip() for c in CLAUSE_END.split(first) if c.strip()]
        n, total = 1, estimate_seconds(clauses[0])
        while n < len(clauses) and total + estimate_seconds(clauses[n]) <= seconds:
            total += estimate_seconds(clauses[n])
            n += 1
        taken = [(joiner.join(clauses[:n]), measure(joiner.join(clauses[:n])), sep)]
        rest = joiner.join(clauses[n:])
        pieces = ([(rest, measure(rest), sep)] if rest else []) + pieces[1:]
    head = taken[0][0] + "".join(sep + piece for piece, _, sep in taken[1:])
    return head, pieces


def _pack(pieces: list[Piece], fits: Callable[[Size], bool]) -> list[Piece]:
    """Neighbouring pieces joined, in order, while the sum of their sizes fits. Sizes add up (a join at a
    space, between CJK characters or inside a cut word adds no wordpiece worth counting), so each piece
    is measured once and packing is linear."""
    packed: list[Piece] = []
    for piece, size, sep in pieces:
        if packed:
            last, last_size, last_sep = packed[-1]
            joined = (last_size[0] + size[0], last_size[1] + size[1])
            if fits(joined):
                packed[-1] = (last + sep + piece, joined, last_sep)
                continue
        packed.append((piece, size, sep))
    return packed


def _split_long(sentence: str, measure: Callable[[str], Size], fits: Callable[[Size], bool],
                joiner: str) -> list[Piece]:
    """An overlong sentence in pieces that fit: at clause punctuation, else between words, else (one word
    longer than a chunk, or a CJK run without spaces) between characters. The pieces are then joined back
    while they fit, so that clauses are not spoken one by one."""
    pieces: list[Piece] = []
    for clause in (c.strip() for c in CLAUSE_END.split(sentence) if c.strip()):
        size = measure(clause)
        if fits(size):
            pieces.append((clause, size, joiner))
            continue
        words: list[Piece] = []
        for word in WORD.findall(clause):
            size = measure(word)
            if fits(size):
                words.append((word, size, " "))
            else:  # its parts join each other without a space
                words += [(part, part_size, " " if k == 0 else "") for k, (part, part_size) in
                          enumerate(_cut(word, measure, fits))]
        pieces += [(text, size, joiner) for text, size, _ in _pack(words, fits)]
    return _pack(pieces, fits)


def _cut(word: str, measure: Callable[[str], Size], fits: Callable[[Size], bool]) -> list[tuple[str, Size]]:
    """A word that fits no chunk, in the longest runs of characters that do. Each run's length is found
    by doubling, then bisecting, so that a word of n characters costs O(n log n) characters measured,
    not O(n^2)."""
    parts, start = [], 0
    while start < len(word):
        good, bad = 1, None  # a run of one character is taken even if it does not fit
        while bad is None and start + good < len(word):
            step = min(2 * good, len(word) - start)
            if fits(measure(word[start: start + step])):
                good = step
            else:
                bad = step
        while bad is not None and bad - good > 1:
            middle = (good + bad) // 2
            if fits(measure(word[start: start + middle])):
                good = middle
            else:
                bad = middle
        part = word[start: start + good]
        parts.append((part, measure(part)))
        start += good
    return parts
