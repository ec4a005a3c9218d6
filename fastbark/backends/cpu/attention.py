"""The CPU backend's attention: whole sequences with bfloat16 products (native/attention.c, or SDPA's own
bfloat16 kernels) in the fast modes, and one query over the cache as two matmuls in half precision.

The fine GPT's passes attend over 1024 frames, and every coarse window starts with a causal
prefill of 257-887 positions: there attention is compute-bound, and half of an int8 fine pass
was float32 SDPA running near this CPU's float32 peak. The C kernel multiplies in bfloat16 on the
AVX512-BF16 units and keeps the softmax and every sum in float32. It is used by the int8 and
bfloat16 modes only (the exact mode keeps SDPA), and with `cpu_kernel="auto"` only where it measured
faster than SDPA (`choice.choose_whole_attention`: on CPUs with AMX, SDPA's bfloat16 kernels may win);
where the CPU lacks AVX512-BF16 or the head size does not fit, `SelfAttention` falls back to SDPA.
The int8 and int4 modes' activations are float32; there SDPA over q, k and v rounded to bfloat16
(`sdpa_bf16_whole`) is a third way, measured with the others: on a CPU with AMX it ran a 1024-frame
pass's attention 2.5x faster than float32 SDPA, the casts included (RESULTS.md section 56).

One query in half precision: two small matmuls run 2-4x faster than SDPA's CPU kernel.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from ...models.gpt import AttentionKernel
from .library import load_kernels


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


def sdpa_whole(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, C3 // 3 // n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, C3 // 3)


def sdpa_bf16_whole(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    """SDPA with q, k and v rounded to bfloat16 (its kernels keep the softmax and the sums in float32), the output
    in qkv's dtype: the fast modes' float32 activations on the CPU's bfloat16 units, where it has them."""
    return sdpa_whole(qkv.to(torch.bfloat16), n_head, causal).to(qkv.dtype)


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
        expected = sdpa_whole(qkv.double(), n_head, causal)
        if not torch.allclose(got.double(), expected, rtol=0.03, atol=0.03):
            return None
        if not all(torch.equal(attend(qkv[i: i + 1], n_head, causal), got[i: i + 1]) for i in range(3)):
            return None
    return attend


class CpuAttention(AttentionKernel):
    """`models.gpt.AttentionKernel` for the CPU: `whole` on the given way, named `whole_kind` (the bfloat16 C kernel
    "bf16-c", SDPA in bfloat16 "sdpa-bf16"), else SDPA; `one_query` as two matmuls where `half_matmul` (models in
    half precision)."""

    def __init__(self, whole: Callable | None, half_matmul: bool, whole_kind: str = "bf16-c"):
        self._whole, self._half_matmul = whole, half_matmul
        self.whole_kind = whole_kind if whole is not None else "sdpa"
        self.one_query_kind = "matmul" if half_matmul else "sdpa"

    def whole(self, qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor | None:
        return self._whole(qkv, n_head, causal) if self._whole is not None else None

    def one_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self._half_matmul:
            return super().one_query(q, k, v)
        # k @ q^T reads the cache slice as it lies; q @ k^T would copy it (a transposed view)
        scores = (k @ q.transpose(-1, -2)).transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, 1, L)
        return scores.float().softmax(-1).to(v.dtype) @ v
