"""int4 fast mode: the GPTs' blocks' linear layers with 4-bit weights in groups of 32, each group with its own
scale (the heads stay int8: the CPU backend's choice, backends/cpu/__init__.py).

For machines whose memory cannot feed the int8 mode's decode steps fast enough: a step streams every
weight once per token, and int4 reads 0.625 bytes a weight (half a byte, plus a float32 scale per 32)
against int8's 1.

Weights are quantised once, per group of GROUP consecutive inputs of an output channel: the group's
largest magnitude m maps to -8, d = m / -8, and q = round(w / d) clamped to [-8, 7] (16 levels, as
ggml's q4_0). Activations are quantised on the fly, per row, to int8 exactly as the int8 mode does
(int8.quantize_rows). Then:
- one position per row (decode steps), with the C kernels: each group's integer sum x_q . q is exact,
  and y = x_scale * sum_g d_g * (x_q . q)_g + bias (native/int4.h, in one C call);
- longer inputs (prefills, fine passes) and machines without the C kernels: the weights are expanded to
  float32 (q * d, in C where built) for each call and multiplied by the rows of x_q, on oneDNN, whose rows
  do not depend on their batch, or on torch.mm where every long input holds one text (`one_text`: the fine
  GPT); the same numbers up to float32 rounding (tested). The fine GPT's passes may instead run as bfloat16
  GEMMs (`LONG_ROUTES`, `route="bfloat16"`, where the backend measured them faster), or on CPUs with AMX as
  the same bfloat16 products on tiles the weight is expanded into at each call (`route="amx"`, amx.py): x_q's
  integers are exact in bfloat16, the weights q * d are rounded to bfloat16 (a relative error of at most 2^-9,
  against int4's own of up to 1/16 of a group's largest weight), the sums stay float32, the result is rounded to
  bfloat16 once.
Each row's numbers depend on that row alone, so a text gets the same bits alone as inside a batch.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import amx as tiles
from .int8 import quantize_rows
from .library import load_kernels, run_q4, run_quantize
from .linears import OwnFormats, one_position, onednn_linear

GROUP = 32  # weights per scale, as native/int4.h's Q4_GROUP
BLOCK = 2 * GROUP  # weights per 32-byte block: one group in each nibble plane (int4.h's layout)


def quantize_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) -> (packed (N, blocks * 32) uint8, scales (N, ceil(K / 32)) float32), K padded with zeros to
    whole blocks of 64. Byte j of block b holds q + 8 of weight 64b + j in its low nibble and of weight
    64b + 32 + j in its high one."""
    n, k = weight.shape
    blocks, groups = math.ceil(k / BLOCK), math.ceil(k / GROUP)
    w = F.pad(weight.detach().float(), (0, blocks * BLOCK - k)).reshape(n, 2 * blocks, GROUP)  # (N, K) -> (N, 2B, 32)
    top = w.gather(-1, w.abs().argmax(-1, keepdim=True))  # (N, 2B, 1): each group's largest magnitude, signed
    scale = top / -8
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group: q = 0
    u = (torch.round(w / safe).clamp_(-8, 7) + 8).to(torch.uint8).reshape(n, blocks, 2, GROUP)  # (N, B, 2, 32)
    packed = u[:, :, 0] | (u[:, :, 1] << 4)  # (N, B, 32): the second group of a block in the high nibbles
    return packed.reshape(n, blocks * GROUP).contiguous(), scale.reshape(n, 2 * blocks)[:, :groups].contiguous()


def dequantize_groups(packed: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """The float32 weight (N, K) that (packed, scale) stand for: q * d."""
    n, groups = scale.shape
    b = packed.reshape(n, -1, GROUP)  # (N, B*32) -> (N, B, 32)
    q = torch.stack([b & 15, b >> 4], dim=2).float() - 8  # (N, B, 2, 32)
    q = q.reshape(n, -1, GROUP)[:, :groups]  # (N, 2B, 32), the padding group of an odd count left out
    return (q * scale[..., None]).reshape(n, groups * GROUP)[:, :k]  # (N, G, 32) -> (N, G*32) -> (N, K)


# The fine GPT's long products, x (M, K) float32 holding int8 values @ weight (N, K) float32 = q * d, transposed:
# float32 GEMMs (the reference), or bfloat16 GEMMs over the same values rounded once (above). name -> f(x, weight).
LONG_ROUTES = {"float32": lambda x, w: F.linear(x, w),
               "bfloat16": lambda x, w: F.linear(x.to(torch.bfloat16), w.to(torch.bfloat16)).float()}


def _tiles_product(amx, x: torch.Tensor, grouped: tuple[torch.Tensor, torch.Tensor], n: int) -> torch.Tensor:
    """The tiles' route as a chooser's candidate: x (M, K) float32 holding int8 values times an int4 weight."""
    return tiles.int4_product(amx, x.to(torch.bfloat16), *grouped, x.shape[1], torch.get_num_threads()).float()


def int4_routes(amx: bool, one_text: bool = True) -> dict:
    """The routes of a layer's long products: with `one_text` (the fine GPT) LONG_ROUTES, else (prefills, whose
    rows must not depend on their batch) oneDNN's float32 GEMMs; and with `amx` the AMX tiles' (each output summed
    in one fixed order, whatever the batch) where this machine has them and they passed their checks."""
    routes = LONG_ROUTES if one_text else {"float32": _big_product}
    if not amx or tiles.amx_kernels() is None:
        return routes
    # the chooser's w, an int4 weight expanded, grouped again on its first use: exactly, where each group holds its
    # -8 level (choice.choose_int4_route's weights); a layer expands its own int4 weight into the tiles at each call
    return {**routes, "amx": tiles.PackedRoute(_tiles_product, lambda amx, w: quantize_groups(w))}


def _big_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T on oneDNN: a row's result does not depend on M, but for M = 1, which oneDNN
    computes on another path (linears.py), so a lone row runs as two."""
    if x.shape[0] == 1:
        return onednn_linear(x.expand(2, -1), weight)[:1]  # (1, K) -> (2, K) -> (1, N)
    return onednn_linear(x, weight)


class Int4Linear(OwnFormats):
    """nn.Linear's forward with int4 weights (groups of GROUP) and per-row int8 activations. The float weight
    is not kept; the scales stay float32 whatever the model is converted to (OwnFormats)."""

    def __init__(self, linear: nn.Linear, native: bool = True, one_text: bool = False, route: str = "float32"):
        """`one_text`: long inputs always hold one text (the fine GPT's passes, pipeline/fine.py), so any GEMM keeps
        a text's bits, and the faster plain torch.mm runs them; otherwise oneDNN, whose rows do not depend on the
        batch (prefills of several texts). `route`: with `one_text`, those as float32 or bfloat16 GEMMs
        (LONG_ROUTES); with or without it, bfloat16 products on AMX tiles ("amx": the weight expanded into tiles at
        each call; a row's numbers do not depend on its batch there either)."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed, scale = quantize_groups(linear.weight)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scale)
        self.bias = linear.bias
        self._bias_f32 = linear.bias.detach().float() if linear.bias is not None else None
        self._native = int4_kernel() if native else None
        self._one_text = one_text
        self.long_route = route if one_text or route == "amx" else "float32"  # prefills' "float32": _big_product
        if self.long_route == "amx" and tiles.amx_kernels() is None:
            raise ValueError("the int4 route 'amx' needs AMX tiles, which this machine or build does not have")

    @property
    def kind(self) -> str:
        return "int4-c" if self._native is not None else "int4-torch"

    def c_operands(self) -> list[torch.Tensor | None]:
        """What the C decode step reads: packed weight (N, blocks * 32), scales (N, groups), float32 bias."""
        return [self.weight_packed, None, self.weight_scale, self._bias_f32]

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (N, K), in C where the kernels are built (the same values: q * d is one rounding)."""
        if self._native is None:
            return dequantize_groups(self.weight_packed, self.weight_scale, self.in_features)
        out = torch.empty(self.out_features, self.in_features)
        load_kernels().dequantize_q4(self.weight_packed.data_ptr(), self.weight_scale.data_ptr(), out.data_ptr(),
                                     self.out_features, self.in_features, torch.get_num_threads())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        rows = x.reshape(-1, self.in_features).float().contiguous()  # (..., K) -> (M, K)
        if self._native is not None and one_position(x):  # a decode step's rows, or a head's
            y = run_q4(self._native, rows, self.weight_packed, self.weight_scale, self._bias_f32, threads)
        else:
            kernels = load_kernels() if self._native is not None else None
            x_q, x_scale = run_quantize(kernels.s8.quantize, rows, threads) if kernels else quantize_rows(rows)
            if self.long_route == "amx":  # the weight expanded into tiles for this call only
                y = tiles.int4_product(tiles.amx_kernels(), x_q.to(torch.bfloat16), self.weight_packed,
                                       self.weight_scale, self.in_features, threads).float() * x_scale
            else:
                product = LONG_ROUTES[self.long_route] if self._one_text else _big_product
                y = product(x_q.float(), self.dequantized()) * x_scale  # (M, N) * (M, 1)
            if self._bias_f32 is not None:
                y += self._bias_f32
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (M, N) -> x's leading shape + (N,)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 (groups of {GROUP})"


@functools.cache
def int4_kernel():
    """The C int4 product, where it was built and agrees with the float32 route (within float32 rounding:
    both sum the same exact integer products, in other orders) and keeps each row's bits in any batch."""
    kernels = load_kernels()
    if kernels is None:
        return None
    with torch.random.fork_rng(devices=[]):  # the layers' initialisation must not move the user's RNG
        torch.manual_seed(0)
        for m, n, k in ((1, 7, 45), (5, 10, 96), (9, 4, 130), (3, 33, 64), (2, 5, 200)):  # every tail
            layer = Int4Linear(nn.Linear(k, n, bias=n % 2 == 0), native=False)
            x = torch.randn(m, k)
            expected = layer(x[:, None]).reshape(m, n)  # the float32 route
            got = run_q4(kernels.q4, x, layer.weight_packed, layer.weight_scale, layer._bias_f32, 2)
            if not torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())):
                return None
            alone = [run_q4(kernels.q4, x[i: i + 1], layer.weight_packed, layer.weight_scale, layer._bias_f32, 1)
                     for i in range(m)]
            if not torch.equal(torch.cat(alone), got):
                return None
            out = torch.empty(n, k)
            kernels.dequantize_q4(layer.weight_packed.data_ptr(), layer.weight_scale.data_ptr(), out.data_ptr(), n, k, 2)
            if not torch.equal(out, layer.dequantized()):
                return None
    return kernels.q4
