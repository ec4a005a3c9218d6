"""Wordpiece ids identical to transformers' BertTokenizer on the same vocabulary."""

import pytest
from transformers import BertTokenizer, BertTokenizerLegacy

from fastbark.errors import BadInput, CheckpointError
from fastbark.text.tokenizer import TextTokenizer

TEXTS = [
    "Hello world",
    "hello   world\n\tthe dog",
    "café naïve über señor ça va",
    "你好世界 こん",
    "Hello, world! Is the dog cute? (yes)",
    "[laughs] the dog [music] ♪ la la ♪",
    "unknownword xyz Qq",
    "I'm \"a\" dog-s;",
]


@pytest.fixture(scope="module")
def berts(hub_dir):
    """Both of transformers' BERT tokenizers: the pure-Python one and the one BarkProcessor loads."""
    legacy = BertTokenizerLegacy(vocab_file=str(hub_dir / "vocab.txt"), do_lower_case=False)
    return legacy, BertTokenizer.from_pretrained(hub_dir, do_lower_case=False)


@pytest.mark.parametrize("text", TEXTS)
def test_vocab_txt_matches_bert_tokenizer(hub_dir, berts, text):
    ours = TextTokenizer.from_file(hub_dir / "vocab.txt").encode(text)
    for bert in berts:
        assert ours == bert.encode(text, add_special_tokens=False)
    assert ours and set(ours) != {1}, "the vocabulary must cover the text, not map it all to [UNK]"


def test_tokenizer_json_matches_vocab_txt(hub_dir, tmp_path):
    from_vocab = TextTokenizer.from_file(hub_dir / "vocab.txt")
    from_vocab.save(tmp_path / "tokenizer.json")
    from_json = TextTokenizer.from_file(tmp_path / "tokenizer.json")
    for text in TEXTS:
        assert from_json.encode(text) == from_vocab.encode(text)


def test_empty_text_and_bad_file(hub_dir, tmp_path):
    tok = TextTokenizer.from_file(hub_dir / "vocab.txt")
    for text in ("", "   \n\t "):
        with pytest.raises(BadInput, match="empty"):
            tok.encode(text)
    with pytest.raises(BadInput, match="string"):
        tok.encode(None)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer"):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")
