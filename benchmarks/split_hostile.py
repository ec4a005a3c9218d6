"""Splitting a large hostile text: 6.6 MB of base64 (no spaces) and 6.6 MB of prose, timed.

The tokenizer is the test vocabulary's (fastbark.testing.VOCAB): Bark's BERT vocabulary cannot be
downloaded where fastbark is developed. It tokenizes into more, shorter pieces, so it is no kinder.

    python benchmarks/split_hostile.py
"""
import base64, os, time, platform
from fastbark.testing import VOCAB
from fastbark.text.tokenizer import TextTokenizer
from fastbark.text.split import chunk_text
open('/tmp/vocab.txt','w').write("\n".join(VOCAB)+"\n")
tok = TextTokenizer.from_file('/tmp/vocab.txt')
count = lambda p: len(tok.encode(p))
n = 6_600_000
texts = {"base64, no spaces": base64.b64encode(os.urandom(n))[:n].decode(),
         "prose": ("Dr. Smith paid $3.50 for it. \"Really?\" she asked... Yes! The dog [laughs] agreed, and then said no. " * (n // 100))[:n]}
for name, text in texts.items():
    t = time.perf_counter(); chunks = chunk_text(text, count); s = time.perf_counter() - t
    print(f"{name}: {len(text)/1e6:.1f} MB, {len(chunks)} chunks, {s:.1f} s", flush=True)
