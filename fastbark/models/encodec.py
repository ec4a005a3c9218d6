"""EnCodec 24 kHz: the decoder (residual-vector-quantizer lookup, then the SEANet decoder) that every
generation ends with, and the encoder half (SEANet encoder, then residual vector quantization) that turns
a recording into codes (the acoustic prompts of a voice made from audio).

Names follow the Hugging Face layout (`decoder.layers.N.conv`, `encoder.layers.N.conv`,
`quantizer.layers.K.codebook.embed`); weight norm is folded into plain `weight`s by the loader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CodecConfig:
    hidden_size: int = 128  # codebook dimension
    num_filters: int = 32
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    num_lstm_layers: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    compress: int = 2
    num_residual_layers: int = 1
    dilation_growth_rate: int = 2
    audio_channels: int = 1
    codebook_size: int = 1024
    sampling_rate: int = 24_000

    def __post_init__(self):
        for name, value in vars(self).items():
            values = value if name == "upsampling_ratios" and isinstance(value, tuple) else (value,)
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"{name} must be {'positive integers' if len(values) != 1 else 'a positive integer'}"
                                 f", got {value!r}")


class CausalConv1d(nn.Module):
    """Conv1d with EnCodec's causal reflect padding: k_eff - stride on the left, plus what makes the length whole."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride, dilation=dilation)
        self.k_eff = (kernel_size - 1) * dilation + 1
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_left = self.k_eff - self.stride
        length = x.shape[-1]
        n_frames = math.ceil((length - self.k_eff + pad_left) / self.stride + 1) - 1
        pad_right = n_frames * self.stride + self.k_eff - pad_left - length
        return self.conv(reflect_pad(x, pad_left, pad_right))


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the input is shorter than the padding (zero-extend first)."""
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    x = F.pad(x, (left, right), mode="reflect")
    return x[..., : x.shape[-1] - extra]


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed causally: the k - stride extra samples are cut on the right."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel_size, stride)
        self.trim = kernel_size - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim]


class LSTM(nn.Module):
    """Multi-layer LSTM over (B, C, T) with a skip connection."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)  # (B, C, T) -> (T, B, C)
        y = self.lstm(x)[0] + x
        return y.permute(1, 2, 0)  # (T, B, C) -> (B, C, T)


class ResnetBlock(nn.Module):
    def __init__(self, config: CodecConfig, dim: int, dilation: int):
        super().__init__()
        hidden = dim // config.compress
        self.block = nn.ModuleList([
            nn.ELU(),
            CausalConv1d(dim, hidden, config.residual_kernel_size, dilation=dilation),
            nn.ELU(),
            CausalConv1d(hidden, dim, 1),
        ])
        self.shortcut = CausalConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.block:
            y = layer(y)
        return self.shortcut(x) + y


class Decoder(nn.Module):
    """SEANet decoder: conv, LSTM, then per ratio ELU + transposed conv (halving channels) + residual block."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        channels = config.num_filters * 2 ** len(config.upsampling_ratios)
        layers: list[nn.Module] = [
            CausalConv1d(config.hidden_size, channels, config.kernel_size),
            LSTM(channels, config.num_lstm_layers),
        ]
        for ratio in config.upsampling_ratios:
            layers += [nn.ELU(), CausalConvTranspose1d(channels, channels // 2, 2 * ratio, ratio)]
            channels //= 2
            layers += [ResnetBlock(config, channels, config.dilation_growth_rate**j)
                       for j in range(config.num_residual_layers)]
        layers += [nn.ELU(), CausalConv1d(channels, config.audio_channels, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Encoder(nn.Module):
    """SEANet encoder: conv, then per ratio (in reverse) residual block + ELU + strided conv (doubling channels),
    then LSTM, ELU and a conv to the codebook dimension. (B, 1, T) -> (B, hidden_size, T / prod(ratios))."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        channels = config.num_filters
        layers: list[nn.Module] = [CausalConv1d(config.audio_channels, channels, config.kernel_size)]
        for ratio in reversed(config.upsampling_ratios):
            layers += [ResnetBlock(config, channels, config.dilation_growth_rate**j)
                       for j in range(config.num_residual_layers)]
            layers += [nn.ELU(), CausalConv1d(channels, 2 * channels, 2 * ratio, stride=ratio)]
            channels *= 2
        layers += [LSTM(channels, config.num_lstm_layers), nn.ELU(),
                   CausalConv1d(channels, config.hidden_size, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Codebook(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.register_buffer("embed", torch.zeros(config.codebook_size, config.hidden_size))


class QuantizerLayer(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.codebook = Codebook(config)


class Quantizer(nn.Module):
    def __init__(self, config: CodecConfig, n_codebooks: int):
        super().__init__()
        self.layers = nn.ModuleList(QuantizerLayer(config) for _ in range(n_codebooks))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, T) -> summed embeddings (B, D, T)."""
        if codes.shape[1] > len(self.layers):
            raise ValueError(f"{codes.shape[1]} codebooks given, the codec has {len(self.layers)}")
        x = sum(F.embedding(codes[:, k], self.layers[k].codebook.embed) for k in range(codes.shape[1]))
        return x.transpose(1, 2)  # (B, T, D) -> (B, D, T)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D, T) -> codes (B, K, T) of every codebook here: each the nearest entry (squared
        Euclidean distance, written as EnCodec writes it, so that near ties fall the same way) to what the
        codebooks before it left over."""
        B, D, T = x.shape
        residual = x.transpose(1, 2).reshape(B * T, D)  # (B, D, T) -> (B * T, D)
        codes = []
        for layer in self.layers:
            embed = layer.codebook.embed  # (V, D)
            distance = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ embed.t() + embed.pow(2).sum(1)[None]
            index = distance.argmin(dim=-1)  # (B * T,)
            residual = residual - F.embedding(index, embed)
            codes.append(index.view(B, T))  # (B * T,) -> (B, T)
        return torch.stack(codes, dim=1)  # K x (B, T) -> (B, K, T)


class EncodecDecoder(nn.Module):
    """Codes (B, K, T) -> waveform (B, T * prod(ratios))."""

    def __init__(self, config: CodecConfig, n_codebooks: int = 8):
        super().__init__()
        self.config = config
        self.quantizer = Quantizer(config, n_codebooks)
        self.decoder = Decoder(config)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.decode(codes)).squeeze(1)


class EncodecEncoder(nn.Module):
    """Waveform (B, T) at 24 kHz -> codes (B, K, ceil(T / prod(ratios))) of the first K codebooks (Bark's 8:
    6 kbps)."""

    def __init__(self, config: CodecConfig, n_codebooks: int = 8):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = Quantizer(config, n_codebooks)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(audio[:, None]))  # (B, T) -> (B, 1, T) -> (B, K, frames)
