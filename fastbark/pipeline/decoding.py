"""The causal GPTs' two moves, shared by the semantic and coarse stages (gpt-fast's shape): a prefill
of the prompt into a fresh KV cache, then one token at a time."""

from __future__ import annotations

import torch

from ..models.gpt import CausalGPT, KVCache


def prefill(model: CausalGPT, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """embeds (B, T, C) at positions 0..T-1 -> logits of the last position (B, V)."""
    return model(embeds, cache, 0)


def decode_one_token(model: CausalGPT, token: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
    """token (B,) at position pos -> next logits (B, V)."""
    return model(model.input_embeds_layer(token)[:, None], cache, pos)  # (B, C) -> (B, 1, C)
