"""Whisper as the speech recogniser of narration that checks itself (verify="asr"; pip install fastbark[verify]).

transformers' Whisper from a hub id or a folder in the hub layout (its own loaders: safetensors, or
`weights_only` pickles), the audio resampled from 24 to 16 kHz with soxr. By default a small English model
for English text and a small multilingual one for Bark's other languages.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BadInput, CheckpointError

ENGLISH_ASR, MULTILINGUAL_ASR = "openai/whisper-base.en", "openai/whisper-base"
WHISPER_RATE = 16_000


def default_asr(language: str) -> str:
    return ENGLISH_ASR if language == "en" else MULTILINGUAL_ASR


class WhisperTranscriber:
    """A `verify.Transcriber` on transformers' Whisper."""

    def __init__(self, source: str, device: torch.device | str = "cpu"):
        try:
            import soxr  # noqa: F401 - checked now, used per chunk
            from transformers import WhisperForConditionalGeneration, WhisperProcessor
        except ImportError as e:
            raise BadInput(f"verify asr needs the verify extra: pip install 'fastbark[verify]' ({e.name} is "
                           f"missing)", "verify") from None
        try:
            self.processor = WhisperProcessor.from_pretrained(source)
            self.model = WhisperForConditionalGeneration.from_pretrained(source).to(device).eval()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the speech recogniser {str(source)!r}: "
                                  f"{str(e).splitlines()[0]}") from None
        self.device = torch.device(device)
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))

    @torch.inference_mode()
    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str) -> str:
        import soxr
        audio16 = soxr.resample(np.asarray(audio, np.float32), sample_rate, WHISPER_RATE)
        features = self.processor(audio16, sampling_rate=WHISPER_RATE, return_tensors="pt").input_features
        options = {"language": language, "task": "transcribe"} if self.multilingual else {}
        ids = self.model.generate(features.to(self.device, self.model.dtype), **options)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
