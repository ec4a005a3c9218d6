"""Long products on AMX tiles (Intel Xeon since Sapphire Rapids): the fine GPT's 1024-row passes and the decode
stages' prefills, int8 and bfloat16.

oneDNN's AMX GEMMs left the second core idle for bark's N = 768 products and ran the int8 mode's rounding and
rescaling as passes of their own (RESULTS.md section 56: the fine passes at 28-30% of the machine's AMX rate).
native/amx.c packs each weight into tiles once, splits every product's 32 x 32 blocks over the threads, and in int8
quantises the rows and rescales the sums in the same call (section 57 has the rates).

- int8: the same bits as the int8 mode's torch._int_mm route (integer sums are exact in any order; the rounding and
  the epilogue are int8.h's). Checked when first used (int8.py's `amx_int8`): not used where they differ.
- bfloat16: float32 sums in another order than oneDNN's, rounded once; its values are checked (within 1%).
- int4: the bfloat16 product over an int4 weight expanded straight into tiles at each call (q * d rounded once to
  bfloat16, the values of int4.py's bfloat16 route; the expansion is never kept).

Each layer takes these routes where measured faster (choice.py). The fine GPT's weights are packed once ("amx"), a
second copy of them (the plain one stays for everything else that reads it). The decode stages keep only the plain
layout their one-call step reads: their prefills multiply on it as it lies ("amx-plain": w's rows as the tiles' A
operand, x packed at each call, no copy kept). Every output sums in one fixed order whatever the rows around it, so
a row's numbers do not depend on its batch (tested).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .choice import PlainLinear
from .library import SHAPES_CHECKED, AmxKernels, load_kernels
from .linears import one_position

KIND_S8, KIND_BF16 = 0, 1  # amx.c's weight kinds
# (M, N, K) the plain weights' kernels are checked at: N a multiple of 32 and K of 64, as they need; rows that end
# inside a tile and a block, and more than one block
PLAIN_SHAPES = ((1, 32, 64), (37, 64, 128), (70, 96, 192))


def plain_runs(n: int, k: int, kind: int) -> bool:
    """Whether the plain weights' kernels (amx.c's _plain entry points) take a weight (N, K) of `kind`: N a multiple
    of 32, K of a tile row's 64 int8 or 32 bfloat16 values."""
    return n % 32 == 0 and k % (64 if kind == KIND_S8 else 32) == 0
_ERRORS = {1: (MemoryError, "fastbark's AMX kernel could not allocate its packed rows"),
           2: (RuntimeError, "fastbark's AMX kernel may not use the tiles in this process"),
           3: (RuntimeError, "fastbark's AMX kernel over plain weights takes N a multiple of 32 and K of 64 (int8) or "
                             "32 (bfloat16)")}


def _checked(code: int) -> None:
    if code:
        error, message = _ERRORS[code]
        raise error(message)


def pack(amx: AmxKernels, w: torch.Tensor) -> torch.Tensor:
    """A weight (N, K), int8 or bfloat16, in amx.c's tiles (bytes)."""
    kind = KIND_S8 if w.dtype == torch.int8 else KIND_BF16
    w = w.contiguous()
    packed = torch.empty(amx.packed_bytes(kind, *w.shape), dtype=torch.uint8)
    amx.pack(kind, w.data_ptr(), packed.data_ptr(), *w.shape)
    return packed


def int8_product(amx: AmxKernels, x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None, out_features: int, threads: int, gelu: bool = False,
                 plain: bool = False) -> torch.Tensor:
    """Float32 rows x (M, K) -> (M, N) float32: int8.py's Int8Linear product, quantised and rescaled in the call;
    with `gelu`, through gelu.h's GELU in the same pass. w: packed (`pack`), or with `plain` the int8 (N, K) weight."""
    y = torch.empty(x.shape[0], out_features, dtype=torch.float32)
    _checked((amx.s8_plain if plain else amx.s8)(
        x.data_ptr(), None, w.data_ptr(), w_scale.data_ptr(), bias.data_ptr() if bias is not None else None,
        y.data_ptr(), None, x.shape[0], out_features, x.shape[1], int(gelu), threads))
    return y


def int8_sums(amx: AmxKernels, x_q: torch.Tensor, w: torch.Tensor, out_features: int,
              plain: bool = False) -> torch.Tensor:
    """x_q (M, K) int8 -> (M, N) int32 sums with a packed weight (or with `plain` the int8 (N, K) weight itself):
    torch._int_mm's numbers (the route chooser's)."""
    x_q = x_q.contiguous()
    y = torch.empty(x_q.shape[0], out_features, dtype=torch.int32)
    _checked((amx.s8_plain if plain else amx.s8)(None, x_q.data_ptr(), w.data_ptr(), None, None, None, y.data_ptr(),
                                                 x_q.shape[0], out_features, x_q.shape[1], 0, torch.get_num_threads()))
    return y


def bfloat16_product(amx: AmxKernels, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                     out_features: int, threads: int, gelu: bool = False, plain: bool = False) -> torch.Tensor:
    """Bfloat16 rows x (M, K) -> (M, N) bfloat16, + bias (float32); with `gelu`, the float32 results through gelu.h's
    GELU before their one rounding. w: packed (`pack`), or with `plain` the bfloat16 (N, K) weight."""
    x, w = x.contiguous(), w.contiguous()  # the plain weight is read as rows (a no-op where it is already)
    y = torch.empty(x.shape[0], out_features, dtype=torch.bfloat16)
    _checked((amx.bf16_plain if plain else amx.bf16)(
        x.data_ptr(), w.data_ptr(), bias.data_ptr() if bias is not None else None, y.data_ptr(), x.shape[0],
        out_features, x.shape[1], int(gelu), threads))
    return y


def q4_tiles(amx: AmxKernels, packed: torch.Tensor, scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """An int4 weight (int4.py's packed bytes and scales) as bfloat16 tiles, as `pack` lays out its bfloat16 expansion."""
    n = packed.shape[0]
    tiles = torch.empty(amx.packed_bytes(KIND_BF16, n, in_features), dtype=torch.uint8)
    amx.pack_q4(packed.data_ptr(), scale.data_ptr(), tiles.data_ptr(), n, in_features, torch.get_num_threads())
    return tiles


def int4_product(amx: AmxKernels, x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, in_features: int,
                 threads: int) -> torch.Tensor:
    """Bfloat16 rows x (M, K) times an int4 weight, expanded into tiles for the call -> (M, N) bfloat16."""
    x = x.contiguous()
    y = torch.empty(x.shape[0], packed.shape[0], dtype=torch.bfloat16)
    _checked(amx.q4(x.data_ptr(), packed.data_ptr(), scale.data_ptr(), y.data_ptr(), x.shape[0], packed.shape[0],
                    in_features, threads))
    return y


class PackedRoute:
    """A route for choice.py's choosers, f(x (M, K), w (N, K)): `product(amx, x, prepare(amx, w), N)`, w prepared
    (by default packed into tiles) on its first use only: the chooser passes the same w at every timed call, and a
    layer prepares its weight once."""

    def __init__(self, product, prepare=None):
        self._product, self._prepare, self._last = product, prepare or pack, (None, None)

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        amx = amx_kernels()
        if self._last[0] is not w:
            self._last = (w, self._prepare(amx, w))
        return self._product(amx, x, self._last[1], w.shape[0])


def _as_it_is(amx: AmxKernels, w: torch.Tensor) -> torch.Tensor:
    return w.contiguous()


INT8_ROUTE = PackedRoute(int8_sums)  # "amx" among int8.py's routes (int_routes) where the tiles are there
BF16_ROUTE = PackedRoute(lambda amx, x, packed, n: bfloat16_product(amx, x, packed, None, n, torch.get_num_threads()))
# "amx-plain": the prefills' routes, over the weight as it is
INT8_PLAIN_ROUTE = PackedRoute(functools.partial(int8_sums, plain=True), _as_it_is)
BF16_PLAIN_ROUTE = PackedRoute(lambda amx, x, w, n: bfloat16_product(amx, x, w, None, n, torch.get_num_threads(),
                                                                     plain=True), _as_it_is)


@functools.cache
def amx_kernels() -> AmxKernels | None:
    """amx.c's kernels where this build has them, the process may use the tiles, and they pass their checks, over
    packed and plain weights: int8 sums equal to exact integer ones; the bfloat16 product within 1% of a float32 one.
    (int8.py checks the int8 mode's whole product, rounding and rescaling included, against its torch path:
    `amx_int8`.)"""
    kernels = load_kernels()
    amx = kernels.amx if kernels is not None else None
    if amx is None or not amx.ready:
        return None
    g = torch.Generator().manual_seed(0)
    # tails of every block and tile, and more than one block; plain weights: tails of the rows only (PLAIN_SHAPES)
    for plain, shapes in ((False, (*SHAPES_CHECKED, (40, 70, 200))), (True, PLAIN_SHAPES)):
        for m, n, k in shapes:
            x_q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
            w_q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
            weight = w_q if plain else pack(amx, w_q)
            if not torch.equal(int8_sums(amx, x_q, weight, n, plain), x_q.int() @ w_q.int().T):
                return None
            x, w, b = torch.randn(m, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16(), torch.randn(n)
            want = F.linear(x.float(), w.float(), b)
            got = bfloat16_product(amx, x, w if plain else pack(amx, w), b, n, torch.get_num_threads(),
                                   plain=plain).float()
            if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item()):
                return None
    return amx


class AmxBf16Linear(PlainLinear):
    """A bfloat16 nn.Linear whose long products (fine passes, prefills) run on the tiles; one-position inputs stay
    F.linear. The plain bfloat16 weight is kept, and beside it a packed copy unless `plain` (the decode stages':
    their products multiply the plain weight as it lies)."""

    kind = "amx-bf16"

    def __init__(self, linear: nn.Linear, amx: AmxKernels | None = None, plain: bool = False):
        super().__init__(linear)
        self._amx = amx or amx_kernels()
        if plain and not plain_runs(self.out_features, self.in_features, KIND_BF16):
            raise ValueError(f"the AMX tiles take plain bfloat16 weights of N a multiple of 32 and K of 32, not "
                             f"{self.out_features} x {self.in_features}")
        self._plain = plain
        tiles = None if plain else pack(self._amx, linear.weight.detach())
        self.register_buffer("weight_tiles", tiles, persistent=False)
        self._bias_f32 = linear.bias.detach().float() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, gelu=False)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """gelu(self(x)) (models.gpt.GeluLinear): on the tiles, gelu.h's GELU over the float32 results before they
        are rounded to bfloat16; one-position rows, torch's GELU after F.linear."""
        return self._product(x, gelu=True)

    def _product(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        if one_position(x) or x.dtype != torch.bfloat16:
            y = F.linear(x, self.weight, self.bias)
            return F.gelu(y) if gelu else y
        rows = x.reshape(-1, self.in_features)  # (..., K) -> (M, K)
        y = bfloat16_product(self._amx, rows, self.weight if self._plain else self.weight_tiles, self._bias_f32,
                             self.out_features, torch.get_num_threads(), gelu, self._plain)
        return y.reshape(*x.shape[:-1], self.out_features)  # (M, N) -> x's leading shape + (N,)

    def extra_repr(self) -> str:
        weights = "plain weights" if self._plain else "packed weights"
        return f"in_features={self.in_features}, out_features={self.out_features}, long products=AMX tiles ({weights})"
