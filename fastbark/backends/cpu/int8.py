"""int8 fast mode: the GPTs' linear layers as int8 x int8 -> int32 matrix products.

Weights are quantised once, symmetric per output channel: w ~= w_q * w_scale, w_q in [-127, 127].
Activations are quantised on the fly, symmetric per row: x ~= x_q * x_scale. The product
x_q @ w_q^T is exact in int32 (at most 4096 * 127 * 127 < 2^31 per sum: bark's longest rows), and
y = (x_q @ w_q^T) * x_scale * w_scale + bias.

Why per row: every row's numbers depend on that row alone, and integer sums do not depend on their
order, so a text gets the same bits alone as inside a batch (batch invariance holds in this mode
too). torch's dynamic quantisation scales the whole batch at once, which would break that.

Speed on the CPU (AVX-512 VNNI): a decode step reads a quarter of the float32 bytes, and the big
prefill and fine-stage products run on the int8 units; RESULTS.md has the numbers and the
fidelity (max relative logit error, greedy agreement) against float32. Where fastbark's C kernels
are built (library.py), single positions (decode steps) are quantised, multiplied and rescaled in
one C call, and longer inputs have their rounding and rescaling done in C around torch._int_mm.
Both give the torch path's bits, which is checked when the kernels are built.

On CPUs with AMX, the long products may run on the tiles instead (amx.py: quantised, multiplied and rescaled in one
call; the fine GPT's weights packed once, the decode stages' prefills over their plain weights), where that measured
fastest (`int_routes`, choice.py); the same bits again.

Without VNNI (AVX2-only CPUs) torch._int_mm has no fast path. There the big products run as float32
matrix products over K in slices short enough that every partial sum is an exact integer
(`int_mm_via_float`), which gives torch._int_mm's int32 bits at float32 GEMM speed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ...models.quantize import quantize_rows
from . import amx as tiles
from .library import (SHAPES_CHECKED, AmxKernels, Int8Kernels, has_vnni, load_kernels, run_gelu, run_quantize,
                      run_quantize_float, run_rescale, run_s8)
from .linears import OwnFormats, one_position

# float32 holds every integer up to 2^24 exactly (24-bit significand). A sum of K products of values
# in [-127, 127] stays within K * 127^2, so for K <= 2^24 / 127^2 = 1040 every partial sum, in any
# order and with or without FMA, is exact. 1024 is the largest power of two under that.
EXACT_FLOAT_K = 1024


def int_mm_via_float(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """x_q (M, K) int8 (or float32 holding int8 values) @ w_q (N, K)^T -> (M, N) int32, equal to
    torch._int_mm(x_q, w_q.t()), on float32 GEMMs."""
    acc = None
    for k in range(0, x_q.shape[1], EXACT_FLOAT_K):
        part = torch.mm(x_q[:, k:k + EXACT_FLOAT_K].float(), w_q[:, k:k + EXACT_FLOAT_K].float().t())  # exact
        part = part.to(torch.int32)  # (M, N): an exact integer, converted without rounding
        acc = part if acc is None else acc.add_(part)
    return acc


def float_products(x_f: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """x_f (M, K) float32 holding int8 values @ w_q (N, K)^T, exact: one float32 GEMM where K <= EXACT_FLOAT_K (every
    sum an exact integer, left as float32), else int_mm_via_float's int32. What the C route passes around: neither
    an int8 copy of x to convert again nor an int32 copy of the sums (RESULTS.md section 48)."""
    if x_f.shape[1] <= EXACT_FLOAT_K:
        return torch.mm(x_f, w_q.float().t())  # (M, K) @ (K, N) -> (M, N)
    return int_mm_via_float(x_f, w_q)


def float_products_exact() -> bool:
    """Whether float32 matrix products run in full precision now (a user may allow bfloat16 or TF32)."""
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return torch.get_float32_matmul_precision() == "highest" and \
        getattr(mkldnn, "fp32_precision", "ieee") in ("ieee", "none")


ROUTES = {"int_mm": lambda x_q, w_q: torch._int_mm(x_q, w_q.t()), "via-float": int_mm_via_float}  # the reference first


def int_routes(amx: bool, plain: bool = False) -> dict:
    """ROUTES, and with `amx` the AMX tiles' (amx.py) where this machine has them and they passed their checks: over
    a packed copy of the weight ("amx"), or with `plain` over the weight as it lies ("amx-plain": the decode stages',
    which keep only that)."""
    if not amx or amx_int8() is None:
        return ROUTES
    return {**ROUTES, "amx-plain": tiles.INT8_PLAIN_ROUTE} if plain else {**ROUTES, "amx": tiles.INT8_ROUTE}


@functools.cache
def amx_int8() -> AmxKernels | None:
    """amx.py's kernels where they run here and their int8 product gives the torch path's bits (checked once)."""
    amx = tiles.amx_kernels()
    if amx is None:
        return None
    with torch.random.fork_rng(devices=[]):  # the layers' initialisation must not move the user's RNG
        torch.manual_seed(0)
        for route, shapes in (("amx", (*SHAPES_CHECKED, (40, 70, 200))), ("amx-plain", tiles.PLAIN_SHAPES)):
            for m, n, k in shapes:
                linear, x = nn.Linear(k, n, bias=n % 2 == 0), torch.randn(m, k) * 3
                if not torch.equal(Int8Linear(linear, route=route, amx=amx)(x), Int8Linear(linear, native=False)(x)):
                    return None
    return amx


def int_products(x_q: torch.Tensor, w_q: torch.Tensor, via_float: bool) -> torch.Tensor:
    """x_q (M, K) @ w_q (N, K)^T in exact int32: torch._int_mm, or float32 GEMMs where those are faster."""
    if via_float and float_products_exact():
        return int_mm_via_float(x_q, w_q)
    return torch._int_mm(x_q, w_q.t())  # (M, K) @ (K, N) -> (M, N) int32, exact


def int8_available(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_int_mm")


@functools.cache
def int8_kernels() -> Int8Kernels | None:
    """The C int8 kernels, where they were built and give the torch path's bits (checked once)."""
    kernels = load_kernels()
    if kernels is None:
        return None
    with torch.random.fork_rng(devices=[]):  # the layers' initialisation must not move the user's RNG
        torch.manual_seed(0)
        for m, n, k in SHAPES_CHECKED:
            layer = Int8Linear(nn.Linear(k, n, bias=n % 2 == 0), native=False)
            for x in (torch.randn(m, 1, k), torch.randn(2, m, k)):  # decode rows; several positions per row
                expected = layer(x)
                layer._native = kernels.s8
                got = layer(x)
                layer._native = None
                if not torch.equal(got, expected):
                    return None
    return kernels.s8


def quantize_rows_native(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows (x (..., K) -> int8 (..., K), scales (..., 1)) in one parallel C pass (int8.h's quantize_row:
    the same bits, checked by int8_kernels): an int8 KV cache's writes (a models.gpt.Quantizer). A prefill's keys
    and values of 887 positions: 0.26 ms each against quantize_rows' 1.57 ms (RESULTS.md section 59)."""
    rows = x.reshape(-1, x.shape[-1]).float().contiguous()  # (..., K) -> (M, K): a copy of a strided view
    q, scale = run_quantize(int8_kernels().quantize, rows, torch.get_num_threads())
    return q.view(x.shape), scale.view(*x.shape[:-1], 1)  # (M, K), (M, 1) -> x's shape, (..., 1)


class Int8Linear(OwnFormats):
    """nn.Linear's forward with int8 weights and per-row int8 activations. The float weight is not kept; the scales
    stay float32 whatever the model is converted to (OwnFormats)."""

    def __init__(self, linear: nn.Linear, native: bool = True, route: str | None = None,
                 amx: AmxKernels | None = None):
        """`route`: how the big products run (ROUTES, int_routes): "int_mm" (torch._int_mm), "via-float" (exact
        float32 GEMMs), "amx" (amx.py: quantised, multiplied and rescaled on the tiles, the weight packed here) or
        "amx-plain" (the same over the plain int8 weight, N a multiple of 32 and K of 64); None: by the CPU's flags
        (no VNNI: via float). The CPU backend passes what it measured (choice.py)."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w_q, w_scale = quantize_rows(linear.weight.detach())  # (N, K) int8, (N, 1)
        self.register_buffer("weight_q", w_q)
        self.register_buffer("weight_scale", w_scale.reshape(-1))  # (N, 1) -> (N,)
        self.register_buffer("weight_sum", w_q.sum(dim=1, dtype=torch.int32))  # (N,): the C kernel's correction
        self.bias = linear.bias
        # the C kernels read a float32 bias (in bfloat16 mode, the torch path also adds it in float32)
        self._bias_f32 = linear.bias.detach().float() if linear.bias is not None else None
        self._native = int8_kernels() if native else None
        self.route = route or ("int_mm" if has_vnni() else "via-float")  # _int_mm is slow without VNNI
        on_tiles = self.route in ("amx", "amx-plain")
        self._amx = (amx or amx_int8()) if on_tiles else None
        if on_tiles and self._amx is None:
            raise ValueError(f"the int8 route '{self.route}' needs AMX tiles, which this machine or build does not have")
        if self.route == "amx-plain" and not tiles.plain_runs(self.out_features, self.in_features, tiles.KIND_S8):
            raise ValueError(f"the int8 route 'amx-plain' takes N a multiple of 32 and K of 64, not "
                             f"{self.out_features} x {self.in_features}")
        if self.route == "amx":
            self.register_buffer("weight_tiles", tiles.pack(self._amx, w_q), persistent=False)

    @property
    def kind(self) -> str:
        return "int8-amx" if self._amx is not None else "int8-c" if self._native is not None else "int8-torch"

    def c_operands(self) -> list[torch.Tensor | None]:
        """What the C kernels read: int8 weight (N, K), its row sums (N,), scales (N,), float32 bias or None."""
        return [self.weight_q, self.weight_sum, self.weight_scale, self._bias_f32]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, gelu=False)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """gelu(self(x)) (models.gpt.GeluLinear). With the C kernels, gelu.h's GELU (the one-call decode step's),
        applied in the pass that rescales the sums (on the tiles, or after torch._int_mm or the float32 GEMMs): the
        same bits on every route; without them, torch's."""
        return self._product(x, gelu=True)

    def _product(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        native, threads = self._native, torch.get_num_threads()
        rows = x.reshape(-1, self.in_features)  # (..., K) -> (M, K)
        if native is not None:  # the kernels read float32 rows, as quantize_rows does
            rows = rows.float().contiguous()
        # one position per row (a head's rows too: the long route would turn the whole int8 weight into float32
        # for a few rows, 37 MB a step at 768 -> 12096)
        if native is not None and one_position(x):
            y = run_s8(native.linear, rows, self.weight_q, self.weight_sum, self.weight_scale, self._bias_f32,
                       threads)
            if gelu:
                run_gelu(native.gelu, y, threads)
        elif self._amx is not None:  # the same numbers, in one call on the tiles
            plain = self.route == "amx-plain"
            y = tiles.int8_product(self._amx, rows.float().contiguous(), self.weight_q if plain else self.weight_tiles,
                                   self.weight_scale, self._bias_f32, self.out_features, threads, gelu, plain)
        elif native is not None and self.route == "via-float" and float_products_exact():  # the same numbers, in float32
            x_f, x_scale = run_quantize_float(native.quantize_float, rows, threads)  # (M, K) the int8 values
            acc = float_products(x_f, self.weight_q)  # (M, N) float32 or int32, exact
            rescale = native.rescale_float if acc.dtype == torch.float32 else native.rescale
            y = run_rescale(rescale, acc, x_scale, self.weight_scale, self._bias_f32, threads, in_place=True, gelu=gelu)
        elif native is not None:  # the same numbers, with the float work in one parallel pass each
            x_q, x_scale = run_quantize(native.quantize, rows, threads)
            acc = int_products(x_q, self.weight_q, self.route == "via-float")  # (M, N) int32, exact
            y = run_rescale(native.rescale, acc, x_scale, self.weight_scale, self._bias_f32, threads, gelu=gelu)
        else:
            x_q, x_scale = quantize_rows(rows)
            acc = int_products(x_q, self.weight_q, self.route == "via-float")  # (M, N) int32, exact
            y = acc * (x_scale * self.weight_scale)  # (M, N) int32 * (M, N) float32 -> float32
            if self.bias is not None:
                y += self.bias
            if gelu:
                y = F.gelu(y)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (M, N) -> x's leading shape + (N,)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, long products {self.route}"

