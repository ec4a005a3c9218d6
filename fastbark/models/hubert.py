"""HuBERT base, up to the block whose output the voice-cloning quantizer reads (block 9 of 12).

Waveform at 16 kHz, not normalised -> a 7-layer convolutional feature encoder (one frame per 320 samples,
400 samples of receptive field: N = floor((T - 400) / 320) + 1) -> LayerNorm and a projection to 768 ->
a grouped convolution as relative position embedding -> post-LayerNorm transformer blocks. Module names
follow the hub checkpoint `facebook/hubert-base-ls960` (transformers' `HubertModel`); the loader
(loading/hubert.py) maps fairseq's names and folds the position convolution's weight norm. Only what
`output_layer` needs is built: the blocks after it never run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_positive_ints

SAMPLE_RATE = 16_000  # HuBERT base was trained on 16 kHz LibriSpeech


@dataclass(frozen=True)
class HubertConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)  # product 320: 50 frames per second
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    output_layer: int = 9  # fairseq's output_layer=9 (1-based); transformers' hidden_states[9]

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_positive_ints(self, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                  "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "output_layer"))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have one entry per convolution")
        if self.hidden_size % self.num_attention_heads or self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError("hidden_size must divide into the attention heads and the position-conv groups")
        if self.output_layer > self.num_hidden_layers:
            raise ValueError(f"output_layer {self.output_layer} is past the last of {self.num_hidden_layers} blocks")

    @property
    def hop(self) -> int:
        """Input samples per output frame (320 for the base model)."""
        hop = 1
        for stride in self.conv_stride:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Input samples one output frame sees (400 for the base model)."""
        field, hop = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field += (kernel - 1) * hop
            hop *= stride
        return field

    def frames(self, samples: int) -> int:
        return max(0, (samples - self.receptive_field) // self.hop + 1)


class ConvLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=False)
        # the first layer only: GroupNorm with one group per channel (normalises each channel over time)
        self.layer_norm = nn.GroupNorm(c_out, c_out) if group_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        dims = (1, *config.conv_dim)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], dims[i + 1], k, s, group_norm=i == 0)
            for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave[:, None]  # (B, T) -> (B, 1, T)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, N)


class FeatureProjection(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class PositionalConv(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        k = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, k, padding=k // 2,
                              groups=config.num_conv_pos_embedding_groups)
        self.trim = 1 if k % 2 == 0 else 0  # an even kernel with padding k/2 gives one frame too many

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        y = self.conv(x.transpose(1, 2))  # (B, N, D) -> (B, D, N) -> (B, D, N + trim)
        return F.gelu(y[:, :, :n]).transpose(1, 2)  # -> (B, D, N) -> (B, N, D)


class Attention(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        d = config.hidden_size
        self.n_head = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_head, d // self.n_head).transpose(1, 2)  # (B, N, D) -> (B, H, N, D/H)
        y = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))  # (B, H, N, D/H) -> (B, N, D)


class FeedForward(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class Block(nn.Module):
    """Post-LayerNorm: x = LN(x + attn(x)); x = LN(x + ff(x))."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.pos_conv_embed = PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.output_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x + self.pos_conv_embed(x))
        for layer in self.layers:
            x = layer(x)
        return x


class Hubert(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, T) at 16 kHz -> block `output_layer`'s output (B, N, hidden_size)"""
        x = self.feature_extractor(wave).transpose(1, 2)  # (B, C, N) -> (B, N, C)
        return self.encoder(self.feature_projection(x))
