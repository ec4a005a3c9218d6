"""The fast modes' attention over whole sequences, with bfloat16 products (native/attention.c).

The fine GPT's passes attend over 1024 frames, and every coarse window starts with a causal
prefill of 257-887 positions: there attention is compute-bound, and half of an int8 fine pass
was float32 SDPA running near this CPU's float32 peak. The C kernel multiplies in bfloat16 on the
AVX512-BF16 units and keeps the softmax and every sum in float32. It is used by the int8 and
bfloat16 modes only (the exact mode keeps SDPA); where the CPU lacks AVX512-BF16 or the head size
does not fit, `SelfAttention` falls back to SDPA.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_gemv import load_kernels


class Bf16Attention:
    """(qkv (B, T, 3C), heads, causal) -> attention output (B, T, C), or None where the kernel cannot run."""

    def __init__(self, kernel):
        self._kernel = kernel

    def __call__(self, qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor | None:
        B, T, C3 = qkv.shape
        rows = qkv.float().contiguous()  # the kernel reads float32 (bfloat16 mode: converted here)
        out = torch.empty(B, T, C3 // 3, dtype=torch.float32)
        status = self._kernel(rows.data_ptr(), out.data_ptr(), B, T, C3 // 3, n_head, int(causal),
                              torch.get_num_threads())
        if status == 1:
            raise MemoryError("fastbark's attention kernel could not allocate its buffers")
        return out.to(qkv.dtype) if status == 0 else None


def _sdpa(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, C3 // 3 // n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, C3 // 3)


@functools.cache
def bf16_attention() -> Bf16Attention | None:
    """The kernel, where it was built, this CPU runs it, and it passes its check: close to float64 SDPA
    (bfloat16 rounding), and each row's bits the same alone as in a batch."""
    kernels = load_kernels()
    if kernels is None:
        return None
    attend = Bf16Attention(kernels.attention)
    g = torch.Generator().manual_seed(0)
    for T, n_head, hd, causal in ((37, 2, 16, True), (70, 3, 32, False), (19, 1, 64, False)):
        qkv = torch.randn(3, T, 3 * n_head * hd, generator=g)
        got = attend(qkv, n_head, causal)
        if got is None:
            return None
        expected = _sdpa(qkv.double(), n_head, causal)
        if not torch.allclose(got.double(), expected, rtol=0.03, atol=0.03):
            return None
        if not all(torch.equal(attend(qkv[i: i + 1], n_head, causal), got[i: i + 1]) for i in range(3)):
            return None
    return attend


def use_bf16_attention(model: nn.Module) -> bool:
    """Give every attention layer of `model` the bfloat16 kernel for whole sequences; True if it got it."""
    attend = bf16_attention()
    if attend is None:
        return False
    for module in model.modules():
        if hasattr(module, "whole_attention"):
            module.whole_attention = attend
    return True
