"""`attention=`: the whole-sequence attention (prefills, fine passes) on one SDPA kernel, named.

`flash` is PyTorch's FlashAttention-2 (CUDA, float16 or bfloat16; EngineOptions refuses it elsewhere),
`math` SDPA's reference kernel (any device). Either wraps what the backend chose, through the models'
attention seam: a decode step's one-query attention stays the backend's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.gpt import AttentionKernel

SDPA_BACKENDS = {"flash": [SDPBackend.FLASH_ATTENTION], "math": [SDPBackend.MATH]}


class SdpaKernel(AttentionKernel):
    def __init__(self, name: str, base: AttentionKernel | None = None):
        self.whole_kind, self._backends = name, SDPA_BACKENDS[name]
        self._base = base or AttentionKernel()
        self.one_query_kind = self._base.one_query_kind

    def whole(self, qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.view(B, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4)  # (B, T, 3C) -> 3 x (B, H, T, hd)
        with sdpa_kernel(self._backends):  # only this kernel: an error if it cannot run, never another one
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, hd) -> (B, T, C)

    def one_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._base.one_query(q, k, v)
