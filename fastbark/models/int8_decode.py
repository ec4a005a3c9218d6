"""The int8 mode's decode step in one C call (native/decode_int8.c), for the semantic and coarse GPTs.

A decode step of bark-small in Python is 12 layers x ~20 small ops; with int8 weights the
products take only about half of its time, and the rest is dispatch, ctypes calls and SDPA over
the KV cache. `Int8DecodeStep` runs every block of the step in one OpenMP region instead: the
same int8 products (bit for bit those of models/int8.py), with LayerNorm, attention over the
float32 KV cache and GELU as float32 loops in C. Its results are close to the Python step's, not
equal (other summation orders), and stay batch-invariant; tests/test_int8_decode.py checks both.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .cpu_gemv import load_kernels
from .gpt import CausalGPT, GPTConfig, KVCache
from .int8 import Int8Linear, quantize_linears

POINTERS_PER_LAYER = 20  # decode_int8.c's Layer8: 2 LayerNorm + 4 x 4 Int8Linear + 2 LayerNorm pointers


def _linear(layer: nn.Module) -> list[torch.Tensor | None]:
    if not isinstance(layer, Int8Linear):
        raise TypeError(f"the int8 decode step needs Int8Linear layers, not {type(layer).__name__}")
    return [layer.weight_q, layer.weight_sum, layer.weight_scale, layer._bias_f32]


class Int8DecodeStep:
    """Runs a quantised CausalGPT's blocks for one position per row: x (B, 1, C) -> (B, 1, C)."""

    def __init__(self, model: CausalGPT, kernel):
        self.model, self._kernel = model, kernel
        eps = {block.layernorm_1.eps for block in model.layers} | {block.layernorm_2.eps for block in model.layers}
        if len(eps) != 1:
            raise ValueError(f"the int8 decode step needs one LayerNorm eps, not {sorted(eps)}")
        self._eps = eps.pop()
        self._tensors = []  # every layer's tensors, in Layer8's order
        for block in model.layers:
            self._tensors += [block.layernorm_1.weight, block.layernorm_1.bias]
            self._tensors += _linear(block.attn.att_proj) + _linear(block.attn.out_proj)
            self._tensors += [block.layernorm_2.weight, block.layernorm_2.bias]
            self._tensors += _linear(block.mlp.in_proj) + _linear(block.mlp.out_proj)
        assert len(self._tensors) == POINTERS_PER_LAYER * len(model.layers)

    def _table(self) -> torch.Tensor:
        """The tensors' addresses, read anew each step: a parameter given new data (`.data = ...`) is
        followed, never read at its old address."""
        return torch.tensor([0 if t is None else t.data_ptr() for t in self._tensors], dtype=torch.int64)

    def __call__(self, x: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        B, T, C = x.shape
        config = self.model.config
        if self.model.layers[0].layernorm_1.weight.dtype != torch.float32:
            raise ValueError("the int8 decode step needs the model's float32 LayerNorms")
        if T != 1 or x.dtype != torch.float32 or cache.k.dtype != torch.float32:
            raise ValueError("the int8 decode step takes one float32 position per row and a float32 cache")
        k, v = cache.k, cache.v  # (n_layer, B, H, max_len, hd) each
        if not (k.is_contiguous() and v.is_contiguous()) or k.shape[1] != B:
            raise ValueError("the KV cache must be contiguous and hold one row per input row")
        rows = x.reshape(B, C).contiguous()  # (B, 1, C) -> (B, C); overwritten by the kernel
        if rows.data_ptr() == x.data_ptr():
            rows = rows.clone()  # never write into the caller's tensor
        table = self._table()
        if self._kernel(rows.data_ptr(), table.data_ptr(), config.n_layer, k.data_ptr(), v.data_ptr(), B, C,
                        config.n_head, k.shape[3], pos, self._eps, torch.get_num_threads()):
            raise MemoryError("fastbark's int8 decode step could not allocate its buffers")
        return rows.reshape(B, 1, C)  # (B, C) -> (B, 1, C)


@functools.cache
def int8_decode_works() -> bool:
    """Whether the C step was built and agrees with the Python step on a small random model."""
    kernels = load_kernels()
    if kernels is None or kernels.s8 is None:
        return False
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, input_vocab_size=32, output_vocab_size=32, block_size=16,
                       bias=True)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():  # the user's RNG must not move
        torch.manual_seed(0)
        model = quantize_linears(CausalGPT(config).eval())
        step = Int8DecodeStep(model, kernels.s8.decode)
        embeds = torch.randn(3, 6, 64)
        expected, got = model.new_cache(3), model.new_cache(3)
        model(embeds[:, :5], expected, 0)
        model(embeds[:, :5], got, 0)
        x = ref = embeds[:, 5:] + model.position_embeds_layer.weight[5]  # position 5 after a 5-position prefill
        for i, block in enumerate(model.layers):
            ref = block(ref, (expected.k[i], expected.v[i]), 5)
        y = step(x, got, 5)

        def close(a, b):  # the C step's LayerNorm sums in another order, so an int8 rounding may flip
            return bool((a - b).abs().max() <= 1e-2 * b.abs().max())
        return close(y, ref) and close(got.k[:, :, :, 5], expected.k[:, :, :, 5]) and \
            close(got.v[:, :, :, 5], expected.v[:, :, :, 5])


def use_int8_decode(model: CausalGPT) -> bool:
    """Give a quantised CausalGPT the one-call decode step, where the C kernels work; True if it got it."""
    if not int8_decode_works() or model.position_embeds_layer.weight.dtype != torch.float32:
        return False
    model.decode_step = Int8DecodeStep(model, load_kernels().s8.decode)
    return True
