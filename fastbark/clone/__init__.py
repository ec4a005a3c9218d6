"""Voices from recordings (issue 19): a recording -> a Bark voice (semantic, coarse and fine prompts).

`audio.py` reads and checks a clip (files, bytes or arrays; soxr resampling), `quantizer.py` holds the
HuBERT-feature quantizers (gitmylo's CustomTokenizer and the community ones), `cloner.py` runs HuBERT
(models/hubert.py), the quantizer and EnCodec's encoder (models/encodec.py). `Bark.voice_from_audio` and
`fastbark clone` are the entry points.
"""
