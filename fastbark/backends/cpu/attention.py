"""The CPU backend's attention: whole sequences with bfloat16 products (native/attention.c on AVX512-BF16 or AMX
tiles, or SDPA's own bfloat16 kernels) in the fast modes, and one query over the cache as two matmuls in half
precision.

The fine GPT's passes attend over 1024 frames, and every coarse window starts with a causal
prefill of 257-887 positions: there attention is compute-bound, and half of an int8 fine pass
was float32 SDPA running near this CPU's float32 peak. The C kernel multiplies in bfloat16 on the
AVX512-BF16 units and keeps the softmax and every sum in float32. It is used by the int8 and
bfloat16 modes only (the exact mode keeps SDPA), and with `cpu_kernel="auto"` only where it measured
faster than SDPA (`choice.choose_whole_attention`: on CPUs with AMX, SDPA's bfloat16 kernels may win);
where the CPU lacks AVX512-BF16 or the head size does not fit, `SelfAttention` falls back to SDPA.
The int8 and int4 modes' activations are float32; there SDPA over q, k and v rounded to bfloat16
(`sdpa_bf16_whole`) is a third way, measured with the others: on a CPU with AMX it ran a 1024-frame
pass's attention 2.5x faster than float32 SDPA, the casts included (RESULTS.md section 56). On those CPUs
attention.c's tile kernel (`amx_attention`) is a fourth way: the same three lines as the AVX512-BF16 kernel, 32
queries at a time on the tiles, reading float32 or bfloat16 q, k and v as they are.

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
    """(qkv (B, T, 3C), heads, causal) -> attention output (B, T, C), or None where the kernel cannot run: attention.c's
    AVX512-BF16 kernel, which reads float32 (bfloat16 q, k, v are converted here)."""

    HEAD_MULTIPLE = 16  # the head sizes it runs: multiples of this, up to 128

    def __init__(self, kernel):
        self._kernel = kernel

    @classmethod
    def runs(cls, n_head: int, n_embd: int) -> bool:
        """Whether the kernel runs heads of this size."""
        hd = n_embd // n_head
        return hd * n_head == n_embd and hd % cls.HEAD_MULTIPLE == 0 and hd <= 128

    def __call__(self, qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor | None:
        B, T, C3 = qkv.shape
        rows = qkv.float().contiguous()
        out = torch.empty(B, T, C3 // 3, dtype=torch.float32)
        return self._finish(self._kernel(rows.data_ptr(), out.data_ptr(), B, T, C3 // 3, n_head, int(causal),
                                         torch.get_num_threads()), out.to(qkv.dtype))

    @staticmethod
    def _finish(status: int, out: torch.Tensor) -> torch.Tensor | None:
        if status == 1:
            raise MemoryError("fastbark's attention kernel could not allocate its buffers")
        return out if status == 0 else None


class AmxAttention(Bf16Attention):
    """The same computation on AMX tiles (attention.c's `fastbark_attention_amx`): qkv float32 or bfloat16, read as
    it is (no cast), the output in its dtype; None where the kernel cannot run (no tiles, a head size it does not)."""

    HEAD_MULTIPLE = 32  # a tile's depth in bfloat16

    def __call__(self, qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor | None:
        if qkv.dtype not in (torch.float32, torch.bfloat16):
            return None
        B, T, C3 = qkv.shape
        qkv = qkv.contiguous()
        out = torch.empty(B, T, C3 // 3, dtype=qkv.dtype)
        return self._finish(self._kernel(qkv.data_ptr(), out.data_ptr(), B, T, C3 // 3, n_head, int(causal),
                                         int(qkv.dtype == torch.bfloat16), torch.get_num_threads()), out)


def sdpa_whole(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, C3 // 3 // n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, C3 // 3)


def sdpa_bf16_whole(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    """SDPA with q, k and v rounded to bfloat16 (its kernels keep the softmax and the sums in float32), the output
    in qkv's dtype: the fast modes' float32 activations on the CPU's bfloat16 units, where it has them."""
    return sdpa_whole(qkv.to(torch.bfloat16), n_head, causal).to(qkv.dtype)


def passes_check(attend: Callable, shapes=((37, 2, 16, True), (70, 3, 32, False), (19, 1, 64, False)),
                 dtypes=(torch.float32,)) -> bool:
    """Whether a whole-sequence attention runs these shapes (T, heads, head size, causal) close to float64 SDPA
    (bfloat16 rounding), each row's bits the same alone as in a batch."""
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for T, n_head, hd, causal in shapes:
            qkv = torch.randn(3, T, 3 * n_head * hd, generator=g).to(dtype)
            got = attend(qkv, n_head, causal)
            if got is None or got.dtype != dtype:
                return False
            expected = sdpa_whole(qkv.double(), n_head, causal)
            if not torch.allclose(got.double(), expected, rtol=0.03, atol=0.03):
                return False
            if not all(torch.equal(attend(qkv[i: i + 1], n_head, causal), got[i: i + 1]) for i in range(3)):
                return False
    return True


@functools.cache
def bf16_attention() -> Bf16Attention | None:
    """The AVX512-BF16 kernel, where it was built, this CPU runs it, and it passes its check (`passes_check`)."""
    kernels = load_kernels()
    attend = Bf16Attention(kernels.attention) if kernels is not None else None
    return attend if attend is not None and passes_check(attend) else None


@functools.cache
def amx_attention() -> AmxAttention | None:
    """The AMX kernel, where it was built, the process has the tiles, and it passes its check in float32 and
    bfloat16, at head sizes 32 and 64 and lengths that end inside a block of 32 queries or keys."""
    kernels = load_kernels()
    amx = kernels.amx if kernels is not None else None
    if amx is None or not amx.ready:
        return None
    attend = AmxAttention(amx.attention)
    shapes = ((37, 2, 32, True), (70, 3, 32, False), (19, 1, 64, False), (65, 2, 64, True))
    return attend if passes_check(attend, shapes, (torch.float32, torch.bfloat16)) else None


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
