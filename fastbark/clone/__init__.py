"""Voices from recordings (issue 19), beside the EnCodec encoder (models/encodec.py, `EncodecEncoder`).

Built so far: `quantizer.py`, the HuBERT-feature -> semantic-token quantizer of the community cloning method
(gitmylo's `CustomTokenizer` checkpoints), loaded safely. Still to come: HuBERT's layer-9 features, audio
input, and `Bark.voice_from_audio` / `fastbark clone`.
"""
