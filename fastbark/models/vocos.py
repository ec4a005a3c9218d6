"""Vocos (Siuzdak 2023), the EnCodec-features variant: a drop-in replacement for EnCodec's decoder that reads
the same codebooks and predicts a spectrogram, turned into audio by an inverse STFT.

codes (B, K, T) at 75 Hz -> the sum of each codebook's embedding (B, 128, T) -> a ConvNeXt backbone (8
blocks, 384 channels, LayerNorms conditioned on the bandwidth) -> per frame a linear head to n_fft + 2
numbers (log-magnitude and phase of n_fft / 2 + 1 bins) -> ISTFT with a Hann window, hop 320, "same"
padding -> (B, T * 320) samples at 24 kHz.

Parameter names follow `charactr/vocos-encodec-24khz`'s `pytorch_model.bin` (`feature_extractor.codebook_
weights`, `backbone.convnext.N.dwconv`, `head.out`, ...), so its state dict loads without renaming. Pure torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_positive_ints

BANDWIDTHS = (1.5, 3.0, 6.0, 12.0)  # kbps: the bandwidths the model was trained to condition on
CODEBOOKS_PER_BANDWIDTH = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16}  # EnCodec 24 kHz: 75 frames/s x 10 bits per codebook


@dataclass(frozen=True)
class VocosConfig:
    input_channels: int = 128  # EnCodec's codebook dimension
    dim: int = 384
    intermediate_dim: int = 1152
    num_layers: int = 8
    adanorm_num_embeddings: int | None = 4  # one (scale, shift) per bandwidth; None: plain LayerNorms
    n_fft: int = 1280
    hop_length: int = 320  # = EnCodec's samples per frame: one spectrogram frame per code frame
    n_codebooks: int = 16  # codebook rows stored: 16 x 1024 (12 kbps)
    codebook_size: int = 1024

    def __post_init__(self):
        check_positive_ints(self, ("input_channels", "dim", "intermediate_dim", "num_layers", "n_fft", "hop_length",
                                   "n_codebooks", "codebook_size"))
        if self.n_fft % 2 or self.n_fft < self.hop_length:
            raise ValueError(f"n_fft must be even and at least hop_length, got {self.n_fft} and {self.hop_length}")


class AdaLayerNorm(nn.Module):
    """LayerNorm without its own affine, scaled and shifted by an embedding of the bandwidth id."""

    def __init__(self, num_embeddings: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Embedding(num_embeddings, dim)
        self.shift = nn.Embedding(num_embeddings, dim)

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:  # x (B, T, C)
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return x * self.scale(bandwidth_id) + self.shift(bandwidth_id)  # (1, C) broadcast over B, T


def _norm(config: VocosConfig) -> nn.Module:
    if config.adanorm_num_embeddings:
        return AdaLayerNorm(config.adanorm_num_embeddings, config.dim)
    return nn.LayerNorm(config.dim, eps=1e-6)


def _apply_norm(norm: nn.Module, x: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:
    return norm(x, bandwidth_id) if isinstance(norm, AdaLayerNorm) else norm(x)


class ConvNeXtBlock(nn.Module):
    def __init__(self, config: VocosConfig):
        super().__init__()
        dim = config.dim
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)  # depthwise, over time
        self.norm = _norm(config)
        self.pwconv1 = nn.Linear(dim, config.intermediate_dim)
        self.pwconv2 = nn.Linear(config.intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1 / config.num_layers))  # layer scale

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:  # x (B, C, T)
        y = self.dwconv(x).transpose(1, 2)  # (B, C, T) -> (B, T, C)
        y = self.pwconv2(F.gelu(self.pwconv1(_apply_norm(self.norm, y, bandwidth_id))))
        return x + (self.gamma * y).transpose(1, 2)  # (B, T, C) -> (B, C, T)


class Backbone(nn.Module):
    def __init__(self, config: VocosConfig):
        super().__init__()
        self.embed = nn.Conv1d(config.input_channels, config.dim, kernel_size=7, padding=3)
        self.norm = _norm(config)
        self.convnext = nn.ModuleList(ConvNeXtBlock(config) for _ in range(config.num_layers))
        self.final_layer_norm = nn.LayerNorm(config.dim, eps=1e-6)

    def forward(self, features: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:
        """features (B, input_channels, T) -> (B, T, dim)"""
        x = _apply_norm(self.norm, self.embed(features).transpose(1, 2), bandwidth_id)  # (B, T, dim)
        x = x.transpose(1, 2)  # (B, T, dim) -> (B, dim, T)
        for block in self.convnext:
            x = block(x, bandwidth_id)
        return self.final_layer_norm(x.transpose(1, 2))  # (B, dim, T) -> (B, T, dim)


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: frame t's window is centred on samples t * hop .. (t + 1) * hop, so
    T frames give exactly T * hop samples. torch.istft pads only by centring, and its overlap check fails at
    the edges that this trims, so the overlap-add is written out: inverse FFT per frame, Hann window, fold
    (sum the overlapping frames), divide by the summed squared window."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (B, n_fft / 2 + 1, T) complex -> (B, T * hop) real"""
        B, _, T = spec.shape
        pad = (self.n_fft - self.hop_length) // 2
        frames = torch.fft.irfft(spec, self.n_fft, dim=1) * self.window[None, :, None]  # (B, n_fft, T)
        length = (T - 1) * self.hop_length + self.n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        audio = F.fold(frames, **fold)[:, 0, 0, pad: length - pad]  # (B, 1, 1, length) -> (B, T * hop)
        envelope = self.window.square()[None, :, None].expand(1, -1, T)  # (1, n_fft, T)
        envelope = F.fold(envelope, **fold)[0, 0, 0, pad: length - pad]  # (T * hop,)
        return audio / envelope


class Head(nn.Module):
    def __init__(self, config: VocosConfig):
        super().__init__()
        self.out = nn.Linear(config.dim, config.n_fft + 2)
        self.istft = ISTFT(config.n_fft, config.hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, dim) -> audio (B, T * hop)"""
        log_magnitude, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)  # (B, n_fft + 2, T) -> 2 x (B, bins, T)
        magnitude = torch.exp(log_magnitude).clamp(max=100.0)  # the trained model's safeguard
        return self.istft(torch.polar(magnitude, phase))


class FeatureExtractor(nn.Module):
    """EnCodec's codebooks, stacked: row k * codebook_size + c is code c of codebook k."""

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.codebook_size = config.codebook_size
        self.codebook_weights = nn.Parameter(torch.empty(config.n_codebooks * config.codebook_size,
                                                         config.input_channels))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, T) -> the sum of their embeddings (B, input_channels, T)"""
        offsets = torch.arange(codes.shape[1], device=codes.device) * self.codebook_size  # (K,)
        embedded = F.embedding(codes + offsets[None, :, None], self.codebook_weights)  # (B, K, T, C)
        return embedded.sum(dim=1).transpose(1, 2)  # (B, K, T, C) -> (B, T, C) -> (B, C, T)


class Vocos(nn.Module):
    def __init__(self, config: VocosConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureExtractor(config)
        self.backbone = Backbone(config)
        self.head = Head(config)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, T) of EnCodec's first K codebooks -> audio (B, T * hop); conditioned on the bandwidth
        of K codebooks (Bark's 8: 6 kbps)."""
        bandwidth = {k: b for b, k in CODEBOOKS_PER_BANDWIDTH.items()}.get(codes.shape[1])
        if bandwidth is None or codes.shape[1] > self.config.n_codebooks:
            raise ValueError(f"Vocos decodes 2, 4, 8 or 16 codebooks (at most {self.config.n_codebooks}), "
                             f"not {codes.shape[1]}")
        bandwidth_id = torch.tensor([BANDWIDTHS.index(bandwidth)], device=codes.device)
        return self.head(self.backbone(self.feature_extractor(codes), bandwidth_id))
