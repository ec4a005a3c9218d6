"""A Bark voice from a recording: `VoiceCloner` holds HuBERT, the quantizers and EnCodec's encoder.

clip (any rate) -> 16 kHz -> HuBERT block 9 (N, 768) -> quantizer -> semantic_prompt (N,)
               -> 24 kHz -> EnCodec encoder at 6 kbps -> fine_prompt (8, M); coarse_prompt = its first 2 rows

Each clip runs alone (HuBERT's first GroupNorm normalises over the whole clip, so padding clips into one
batch would change their tokens): a clip's voice is the same whichever clips it is cloned with.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..constants import N_COARSE_CODEBOOKS, SAMPLE_RATE as CODEC_RATE
from ..loading.hubert import DEFAULT_HUBERT, load_hubert
from ..loading.layouts import DEFAULT_CODEC, load_encoder
from ..models.encodec import EncodecEncoder
from ..models.hubert import SAMPLE_RATE as HUBERT_RATE, Hubert
from ..pipeline.progress import ProgressCallback, Reporter
from ..voices import Voice
from .audio import Clip, read_clip
from .quantizer import DEFAULT_QUANTIZER, Quantizer, load_quantizer, quantizer_file

CLONE_STEPS = ("read", "hubert", "quantizer", "encodec")  # what a clone's progress counts


@dataclass(frozen=True)
class CloneReport:
    """Where each part of cloning runs and what it was loaded from."""

    device: str
    hubert: str
    quantizer: str
    quantizer_version: int
    encoder: str

    def __str__(self) -> str:
        return (f"cloning on {self.device} (float32): HuBERT from {self.hubert}, quantizer {self.quantizer} "
                f"(version {self.quantizer_version}), EnCodec encoder from {self.encoder}")


class VoiceCloner:
    def __init__(self, hubert: Hubert, encoder: EncodecEncoder, quantizer: Quantizer, *,
                 device: torch.device | str = "cpu", quantizer_name: str = "custom", hub: dict | None = None,
                 sources: tuple[str, str] = ("given", "given")):
        self.device = torch.device(device)
        self.hubert, self.encoder = hubert.to(self.device), encoder.to(self.device)
        self.quantizer_name = quantizer_name
        self._quantizers = {quantizer_name: quantizer.to(self.device)}
        self._hub = hub or {}
        self._lock = threading.Lock()  # quantizers load at first use, maybe from several threads
        self._sources = sources

    @classmethod
    def from_pretrained(cls, *, hubert: str | os.PathLike = DEFAULT_HUBERT,
                        quantizer: str | os.PathLike = DEFAULT_QUANTIZER, codec: str | os.PathLike = DEFAULT_CODEC,
                        device: torch.device | str = "cpu", cache_dir: str | None = None,
                        local_files_only: bool = False) -> "VoiceCloner":
        """HuBERT (hub id, folder or fairseq .pt), a quantizer (a name of QUANTIZERS, a .pth file or
        owner/repo:file.pth) and EnCodec's encoder (a .th file, an EnCodec or Bark folder or hub id)."""
        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        quantizer_model = load_quantizer(quantizer_file(quantizer, **hub), device)  # the smallest, checked first
        model = load_hubert(hubert, device, **hub)
        encoder = load_encoder(codec, torch.device(device), **hub)
        return cls(model, encoder, quantizer_model, device=device,
                   quantizer_name=os.fspath(quantizer), hub=hub, sources=(os.fspath(hubert), os.fspath(codec)))

    def quantizer(self, name: str | os.PathLike | None = None) -> Quantizer:
        """The quantizer `name` (default: the one this cloner was made with), loaded at first use."""
        name = os.fspath(name) if name is not None else self.quantizer_name
        with self._lock:
            if name not in self._quantizers:
                self._quantizers[name] = load_quantizer(quantizer_file(name, **self._hub), self.device)
            return self._quantizers[name]

    def report(self) -> CloneReport:
        name = self.quantizer_name
        return CloneReport(str(self.device), self._sources[0], name, self._quantizers[name].version, self._sources[1])

    @torch.inference_mode()
    def clone(self, audio, sample_rate: int | None = None, *, quantizer: str | os.PathLike | None = None,
              progress: ProgressCallback | None = None, name: str | None = None) -> Voice:
        """A Voice from a recording: a path, an audio file's bytes, an array with its sample_rate, or a Clip
        already read."""
        steps = Reporter(progress, "clone", len(CLONE_STEPS), "part")
        clip = audio if isinstance(audio, Clip) else read_clip(audio, sample_rate, name=name)
        quantizer = self.quantizer(quantizer)  # loaded (and checked) before the long part
        steps.advance()
        wave16 = torch.from_numpy(clip.resampled(HUBERT_RATE)).to(self.device)
        features = self.hubert(wave16[None])[0]  # (T16,) -> (1, T16) -> (1, N, 768) -> (N, 768)
        steps.advance()
        semantic = quantizer.tokens(features).cpu().numpy()
        steps.advance()
        wave24 = torch.from_numpy(clip.resampled(CODEC_RATE)).to(self.device)
        codes = self.encoder(wave24[None])[0].cpu().numpy()  # (T24,) -> (1, T24) -> (1, 8, M) -> (8, M)
        steps.advance()
        n, m = len(semantic), codes.shape[1]
        if round(m / n, 1) != 1.5:  # Bark's own check on a history prompt
            raise AssertionError(f"{clip.name}: {m} codec frames for {n} semantic tokens, not ~1.5 per token")
        return Voice(semantic.astype(np.int64), codes[:N_COARSE_CODEBOOKS].astype(np.int64), codes.astype(np.int64))
