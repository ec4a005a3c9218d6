"""Text -> BERT multilingual cased wordpiece ids, through the `tokenizers` library."""

from __future__ import annotations

import os
import re
import warnings

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from ..constants import MAX_TEXT_TOKENS
from ..errors import BadInput, CheckpointError


# words of several scripts: any wordpiece vocabulary that can write text turns some of them into known pieces
WORD_PROBE = "the hello world a de la 你 好"


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str = "the tokenizer"):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        unknown = {tokenizer.token_to_id(t) for t in ("[UNK]", "<unk>")} - {None}
        ids = tokenizer.encode(WORD_PROBE, add_special_tokens=False).ids
        if not any(i not in unknown for i in ids):  # Bark would speak every text as unknown-word noise
            raise CheckpointError(f"{source} cannot produce a single word: {WORD_PROBE!r} becomes "
                                  f"{'nothing' if not ids else 'only unknown-word tokens'}; give Bark's "
                                  f"tokenizer (BERT multilingual cased)")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """A `tokenizer.json`, or a BERT `vocab.txt` (cased: no lower-casing, no accent stripping)."""
        path = os.fspath(path)
        try:
            if path.endswith(".json"):
                tokenizer = Tokenizer.from_file(path)
            else:
                tokenizer = BertWordPieceTokenizer(path, clean_text=True, handle_chinese_chars=True,
                                                   strip_accents=False, lowercase=False)._tokenizer
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise CheckpointError(f"cannot read the tokenizer file {path!r}: {e}") from None
        return cls(tokenizer, f"the tokenizer file {path!r}")

    def save(self, path: str | os.PathLike) -> None:
        """Write as a `tokenizer.json`."""
        self._tokenizer.save(os.fspath(path))

    def encode(self, text: str) -> list[int]:
        """Wordpiece ids of `text` (whitespace normalised, no special tokens)."""
        return self._tokenizer.encode(normalize_text(text), add_special_tokens=False).ids


SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no character, and no UTF-8 encoding


def normalize_text(text: str) -> str:
    if not isinstance(text, str):
        raise BadInput(f"text must be a string, got {type(text).__name__}", "text")
    bad = SURROGATE.search(text)
    if bad:
        raise BadInput(f"text is not valid Unicode: a lone surrogate U+{ord(bad.group()):04X} at character "
                       f"{bad.start()} (a command-line argument that is not UTF-8 reads as one); give UTF-8 text",
                       "text")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise BadInput("text is empty (or only whitespace); give some words to speak", "text")
    return text


def fit_text_window(ids: list[int]) -> list[int]:
    """Keep the first MAX_TEXT_TOKENS ids, warning when text is cut."""
    if len(ids) > MAX_TEXT_TOKENS:
        warnings.warn(f"text is {len(ids)} tokens long; Bark reads at most {MAX_TEXT_TOKENS}, "
                      f"so the rest is cut", stacklevel=3)
        return ids[:MAX_TEXT_TOKENS]
    return ids
