"""Text -> BERT multilingual cased wordpiece ids, through the `tokenizers` library."""

from __future__ import annotations

import os
import re
import warnings

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from ..constants import MAX_TEXT_TOKENS
from ..errors import BadInput, CheckpointError


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """A `tokenizer.json`, or a BERT `vocab.txt` (cased: no lower-casing, no accent stripping)."""
        path = os.fspath(path)
        try:
            if path.endswith(".json"):
                return cls(Tokenizer.from_file(path))
            bert = BertWordPieceTokenizer(path, clean_text=True, handle_chinese_chars=True,
                                          strip_accents=False, lowercase=False)
            return cls(bert._tokenizer)
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise CheckpointError(f"cannot read the tokenizer file {path!r}: {e}") from None

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
