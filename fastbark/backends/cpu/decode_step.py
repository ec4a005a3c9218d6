"""A decode step in one C call (native/decode_step.c), for the semantic and coarse GPTs.

A decode step of bark-small in Python is 12 layers x ~20 small ops; the products take only part of
its time, and the rest is dispatch, ctypes calls and SDPA over the KV cache (in float32, at 600
cached positions, SDPA alone took 3.6 ms of a 25 ms coarse step). `FusedDecodeStep` runs every
block of the step in one OpenMP region instead:
- exact mode (float32): the C kernel's products (gemv.h), bit for bit GemvLinear's for the same rows;
- int8 mode: the same int8 products as int8.py (bit for bit, for the same input rows);
- int4 mode: int4.py's products (native/int4.h, as its C kernel computes them);
- bfloat16 mode: the bfloat16 weights, input rows rounded to bfloat16, float32 sums.
LayerNorm, attention over the KV cache (float32, or int8 or bfloat16 in the int8 and int4 modes) and GELU run as
float32 loops in C (LayerNorm's statistics in float64; attention 8-wide with AVX2, 16-wide with AVX-512), and the
residual stream stays float32. The results are close to the Python step's, not equal (other summation orders, and
in bfloat16 a float32 residual stream). Every row follows one fixed sequence of operations, whatever its batch and
the thread count: in float32 a row gets the same bits alone as in a batch, with one thread as with several (checked
with the step itself).
Whether the step runs at all is measured against the blocks (choice.py: `choose_step`).
tests/test_decode_step.py checks all four.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...models.gpt import CausalGPT, GPTConfig, KVCache
from .amx import AmxBf16Linear
from .int4 import Int4Linear, int4_kernel
from .int8 import Int8Linear, int8_kernels
from .library import load_kernels
from .linears import Bf16ViaFloat32Linear, GemvLinear

INT8, BF16, F32, INT4 = 0, 1, 2, 3  # decode_step.c's weight formats
KV_FORMATS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # decode_step.c's KV cache formats
POINTERS_PER_LAYER = 20  # decode_step.c's Layer: 2 LayerNorm + 2 x 4 linear + 2 LayerNorm + 2 x 4 linear


def weight_format(model: CausalGPT) -> int | None:
    """INT8 or INT4 for a quantised model, BF16 for plain bfloat16 linear layers (nn.Linear, Bf16ViaFloat32Linear or
    AmxBf16Linear, which keep the plain weight), F32 for float32 ones (nn.Linear or GemvLinear, likewise), None
    otherwise."""
    linears = [m for block in model.layers for m in (block.attn.att_proj, block.attn.out_proj, block.mlp.in_proj,
                                                      block.mlp.out_proj)]
    if all(isinstance(m, Int8Linear) for m in linears):
        return INT8
    if all(isinstance(m, Int4Linear) for m in linears):
        return INT4
    if all(type(m) in (nn.Linear, Bf16ViaFloat32Linear, AmxBf16Linear) and m.weight.dtype == torch.bfloat16
           and m.weight.is_contiguous() for m in linears):
        return BF16
    if all(type(m) in (nn.Linear, GemvLinear) and m.weight.dtype == torch.float32 and m.weight.is_contiguous()
           for m in linears):
        return F32
    return None


def _float32(t: torch.Tensor | None) -> torch.Tensor | None:
    """float32 parameters as they are (so the step follows them); others as float32 copies."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def _linear(layer: nn.Module, format: int) -> list[torch.Tensor | None]:
    if format in (INT8, INT4):
        return layer.c_operands()
    return [layer.weight, None, None, _float32(layer.bias)]


class FusedDecodeStep:
    """Runs a fast-mode CausalGPT's blocks for one position per row: x (B, 1, C) -> (B, 1, C). A
    `models.gpt.DecodeStep`.

    The weights' addresses are read anew each step. In a bfloat16 model, the LayerNorm parameters
    (and biases) are float32 copies made here."""

    kind = "fused-c"

    def __init__(self, model: CausalGPT, kernel):
        self.model, self._kernel, self._format = model, kernel, weight_format(model)
        if self._format is None:
            raise TypeError("the fused decode step needs Int8Linear, Int4Linear, or bfloat16 or float32 linear layers")
        eps = {block.layernorm_1.eps for block in model.layers} | {block.layernorm_2.eps for block in model.layers}
        if len(eps) != 1:
            raise ValueError(f"the fused decode step needs one LayerNorm eps, not {sorted(eps)}")
        self._eps = eps.pop()
        self._tensors = []  # every layer's tensors, in Layer's order
        for block in model.layers:
            self._tensors += [_float32(block.layernorm_1.weight), _float32(block.layernorm_1.bias)]
            self._tensors += _linear(block.attn.att_proj, self._format) + _linear(block.attn.out_proj, self._format)
            self._tensors += [_float32(block.layernorm_2.weight), _float32(block.layernorm_2.bias)]
            self._tensors += _linear(block.mlp.in_proj, self._format) + _linear(block.mlp.out_proj, self._format)
        assert len(self._tensors) == POINTERS_PER_LAYER * len(model.layers)

    def _table(self) -> torch.Tensor:
        """The tensors' addresses, read anew each step: a parameter given new data (`.data = ...`) is
        followed, never read at its old address."""
        return torch.tensor([0 if t is None else t.data_ptr() for t in self._tensors], dtype=torch.int64)

    def __call__(self, x: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        B, T, C = x.shape
        config = self.model.config
        k, v = cache.k, cache.v  # (n_layer, B, H, max_len, hd) each
        if T != 1 or x.dtype not in (torch.float32, torch.bfloat16) or k.dtype not in KV_FORMATS:
            raise ValueError("the fused decode step takes one position per row, and a cache in float32, bfloat16 or "
                             "int8")
        scales = (cache.k_scale, cache.v_scale) if k.dtype == torch.int8 else ()
        if not all(t.is_contiguous() for t in (k, v, *scales)) or k.shape[1] != B or v.dtype != k.dtype or \
                (k.dtype == torch.int8 and any(t is None or t.dtype != torch.float32 for t in scales)):
            raise ValueError("the KV cache must be contiguous and hold one row per input row (int8: with its scales)")
        rows = x.reshape(B, C).float()  # (B, 1, C) -> (B, C); overwritten by the kernel
        if rows.data_ptr() == x.data_ptr():
            rows = rows.clone()  # never write into the caller's tensor
        table = self._table()
        status = self._kernel(self._format, rows.data_ptr(), table.data_ptr(), config.n_layer, k.data_ptr(),
                              v.data_ptr(), *(t.data_ptr() for t in scales) if scales else (None, None),
                              KV_FORMATS[k.dtype], B, C, config.n_head, k.shape[3], pos, self._eps,
                              torch.get_num_threads())
        if status:
            raise MemoryError("fastbark's decode step could not allocate its buffers") if status == 1 else \
                ValueError(f"the fused decode step takes heads of at most 128, not {C // config.n_head}")
        return rows.to(x.dtype).reshape(B, 1, C)  # (B, C) -> (B, 1, C)


def written_at(cache: KVCache, pos: int) -> torch.Tensor:
    """Every layer's key and value at `pos`, as float32: (n_layer, 2, B, H, hd)."""
    return torch.stack([torch.stack(cache.layer(i).read(pos + 1, torch.float32))[..., pos, :]
                        for i in range(cache.k.shape[0])])


@functools.cache
def decode_step_works(format: int) -> bool:
    """Whether the C step was built and agrees with the Python step on a
    small random model (INT8 and INT4: over float32, bfloat16 and int8 caches; int8 is the backend's choice); for F32
    also that each row gets the same bits alone as in the batch, and with one thread as with all of them (the
    exact mode's promises)."""
    kernels = load_kernels()
    if kernels is None or (format == INT8 and int8_kernels() is None) or (format == INT4 and int4_kernel() is None):
        return False
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, input_vocab_size=32, output_vocab_size=32, block_size=16,
                       bias=True)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():  # the user's RNG must not move
        torch.manual_seed(0)
        model = CausalGPT(config).eval()
        if format in (INT8, INT4):
            model.swap_linears(Int8Linear if format == INT8 else Int4Linear)
        elif format == BF16:
            model.to(torch.bfloat16)
        step = FusedDecodeStep(model, kernels.decode_step)
        embeds = torch.randn(3, 14, 64).to(model.position_embeds_layer.weight.dtype)
        x = embeds[:, 13:] + model.position_embeds_layer.weight[13]  # position 13 after a 13-position prefill
        # int8: the C LayerNorm sums in another order, so an int8 rounding may flip; bfloat16: torch rounds
        # every activation, the C step keeps them in float32; float32: other summation orders only
        tolerance = {INT8: 0.01, INT4: 0.01, BF16: 0.05, F32: 1e-4}[format]

        def close(a, b):
            return bool((a.float() - b.float()).abs().max() <= tolerance * b.float().abs().max())
        for cache_dtype in (None, torch.bfloat16, torch.int8) if format in (INT8, INT4) else (None,):
            model.use_kernels(cache_dtype=cache_dtype)
            expected, got = model.new_cache(3), model.new_cache(3)
            model(embeds[:, :13], expected, 0)
            model(embeds[:, :13], got, 0)
            ref = x
            for i, block in enumerate(model.layers):
                ref = block(ref, expected.layer(i), 13)
            y = step(x, got, 13)
            if not (close(y, ref) and close(written_at(got, 13), written_at(expected, 13))):
                return False
        if format == F32:
            alone = [step(x[i: i + 1], KVCache(got.k[:, i: i + 1].contiguous(), got.v[:, i: i + 1].contiguous()), 13)
                     for i in range(3)]
            if not torch.equal(torch.cat(alone), y):
                return False
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                one = step(x, got, 13)
            finally:
                torch.set_num_threads(threads)
            return torch.equal(one, y)
        return True


def fused_decode_step(model: CausalGPT) -> FusedDecodeStep | None:
    """The one-call decode step for a CausalGPT with int8, int4, bfloat16 or float32 linear layers
    (weight_format) on the CPU, where the C kernels work; None otherwise."""
    format = weight_format(model)
    if format is None or model.position_embeds_layer.weight.device.type != "cpu" or not decode_step_works(format):
        return None
    return FusedDecodeStep(model, load_kernels().decode_step)
