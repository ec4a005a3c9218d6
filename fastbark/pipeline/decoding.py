"""The causal GPTs' two moves, shared by the semantic and coarse stages (gpt-fast's shape): a prefill
of the prompt into a fresh KV cache, then one token at a time."""

from __future__ import annotations

import torch

from ..errors import CheckpointError
from ..models.gpt import CausalGPT, KVCache


def prefill(model: CausalGPT, embeds: torch.Tensor, cache: KVCache, stage: str = "semantic") -> torch.Tensor:
    """embeds (B, T, C) at positions 0..T-1 -> logits of the last position (B, V), checked finite."""
    return check_finite(model.prefill(embeds, cache), stage)


def check_finite(logits: torch.Tensor, stage: str) -> torch.Tensor:
    """Stop where non-finite numbers arise (one check per prompt, not per token: weights are checked when
    loaded, so this catches what a dtype overflows)."""
    if not bool(torch.isfinite(logits).all()):
        raise CheckpointError(f"the {stage} model gave NaN or infinite logits in the {stage} stage "
                              f"({str(logits.dtype).removeprefix('torch.')}): its numbers overflow this dtype "
                              f"or its weights are damaged; try dtype='float32'")
    return logits


def decode_one_token(model: CausalGPT, token: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
    """token (B,) at position pos -> next logits (B, V)."""
    return model.decode(token, cache, pos)
