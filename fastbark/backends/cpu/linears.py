"""The CPU backend's linear layers for the exact mode's decode steps: the C kernel, or oneDNN-packed weights.

A decode step is a chain of matrix-vector products, bound by how fast the weights stream from
memory (benchmarks/linear_bandwidth.py, RESULTS.md section 8):
- `GemvLinear` keeps the plain float32 weight. One-position inputs (x (B, 1, K), or a head's (B, K)) go to the C kernel
  (native/gemv.c), whose every output follows one fixed order of operations, so a text gets the same
  bits alone as inside a batch. Longer inputs (prefills, compute-bound) go to oneDNN, whose rows do
  not depend on the batch either.
- `PackedLinear` holds the weight in oneDNN's packed layout (the plain one is not kept). For some
  shapes (a long reduction, like the MLP's 3072 -> 768) oneDNN computes a single float32 row on a
  different path from two or more rows, which differs in the last bits; every multi-row product
  agrees row by row. So each layer checks once, when packed, whether its one-row product matches;
  where it does not, a lone row is computed as two rows. The layers that need no padding pay nothing.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .choice import PlainLinear
from .library import load_kernels, run_f32

PACKING_ROWS_HINT = 4  # decode steps run 1-16 rows; one layout, packed for 4 rows, serves them all


def _onednn(x, weight, bias):
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T + bias on oneDNN, whose rows do not depend on how many come together (but for a lone row:
    see PackedLinear), where torch has it; F.linear elsewhere."""
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


class OwnFormats(nn.Module):
    """A layer whose tensors C kernels read by address, in the formats the layer made them in (float32 weights,
    int8 or int4 codes, float32 scales and biases). `Module.to(dtype)`, `.bfloat16()`, `.float()` leave those formats
    as they are: they set the activations' dtype, which such a layer takes in any float dtype (it reads them as
    float32 and returns theirs). Converting them would hand a kernel a buffer of another width to read as float32
    (reading past its end) and round the torch path's scales."""

    def _apply(self, fn, recurse: bool = True):
        # detached: torch may convert a parameter in place (param.data = ...), these keep the old tensors
        kept = {name: t.detach() for name, t in (*self._parameters.items(), *self._buffers.items()) if t is not None}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._parameters.get(name, self._buffers.get(name))
            if after.dtype == before.dtype:  # a move, or nothing: kept
                continue
            restored = before.to(after.device)  # the dtype change undone
            if name in self._parameters:
                after.data = restored
            else:
                self._buffers[name] = restored
        return self


def one_position(x: torch.Tensor) -> bool:
    """Whether x holds one position per row: (B, 1, K) in a decode step, or (B, K) at a head, whatever B is.
    Such rows take a decode kernel, so that a row's bits do not depend on how many rows come with it."""
    return x.dim() == 2 or (x.dim() > 2 and x.shape[-2] == 1)


class PackedLinear(nn.Module):
    """nn.Linear's forward over a oneDNN-packed weight. The plain weight is not kept."""

    kind = "onednn"

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACKING_ROWS_HINT)
        self.bias = linear.bias
        self.pad_single_row = not self._one_row_matches_batch(linear.weight.dtype)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return _onednn(x, self.packed, self.bias)

    def _one_row_matches_batch(self, dtype: torch.dtype) -> bool:
        """Does a row computed alone get the same bits as inside a batch? (The kernel is chosen by shape.)"""
        x = torch.randn(3, self.in_features, generator=torch.Generator().manual_seed(0)).to(dtype)
        batch = self._product(x)
        return all(torch.equal(self._product(x[i: i + 1]), batch[i: i + 1]) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_single_row and x.numel() == x.shape[-1]:  # one row: run it as two (module docstring)
            two = x.reshape(1, -1).expand(2, -1)  # (1, K) -> (2, K)
            return self._product(two)[:1].reshape(*x.shape[:-1], -1)  # (2, N) -> x's leading shape + (N,)
        return self._product(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def pack_linear(linear: nn.Linear) -> PackedLinear | None:
    """`linear` as a PackedLinear, or None where oneDNN cannot pack it on this machine."""
    try:
        return PackedLinear(linear)
    except (RuntimeError, NotImplementedError):
        return None


@functools.cache
def packing_available(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU pack weights of `dtype` for oneDNN (bfloat16 needs AVX-512 or
    AVX-NE-CONVERT)."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available() \
            or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    return pack_linear(nn.Linear(8, 8, bias=False).to(dtype)) is not None


class GemvLinear(OwnFormats):
    """nn.Linear for the CPU decode step: one-position inputs use the C kernel, longer ones oneDNN. The weight stays
    float32 (OwnFormats); inputs of another dtype are read as float32."""

    kind = "c"

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().contiguous(), requires_grad=False)
        self.bias = linear.bias
        self._kernel = load_kernels().f32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not one_position(x):  # several positions per row: a compute-bound product (oneDNN repacks per call)
            return onednn_linear(x.float(), self.weight, self.bias).to(x.dtype)
        rows = x.reshape(-1, self.in_features).float().contiguous()  # (B, 1, K) or (B, K) -> (B, K)
        y = run_f32(self._kernel, rows, self.weight, self.bias, torch.get_num_threads())  # (B, N)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # (B, N) -> (B, 1, N) or (B, N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, decode=C kernel"


def bfloat16_via_float32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A bfloat16 product as a float32 GEMM over the same values, rounded back to bfloat16: each product of two
    bfloat16 values is exact in float32 and the sums are float32, as in a bfloat16 GEMM, in another order. On oneDNN,
    like the exact mode's long products (a row's result does not depend on its batch)."""
    y = onednn_linear(x.float(), weight.float(), None if bias is None else bias.float())
    return y.to(torch.bfloat16)


HALF_ROUTES = {"bfloat16": F.linear, "via-float32": bfloat16_via_float32}  # choice.choose_half_route's candidates


class Bf16ViaFloat32Linear(PlainLinear):
    """A bfloat16 nn.Linear whose long products (prefills, fine passes) run as float32 GEMMs over the same values
    (`bfloat16_via_float32`), for CPUs whose bfloat16 GEMMs measured slower (those without bfloat16 arithmetic:
    on an AVX2 Zen 3 a fine pass's products took 8.4 s in bfloat16 against 0.95 s in float32). The plain bfloat16
    weight is kept (the one-call decode step reads it, and one-position inputs stay in bfloat16); each long
    product widens it for the call."""

    kind = "via-float32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if one_position(x):
            return F.linear(x, self.weight, self.bias)
        return bfloat16_via_float32(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, long products=float32 GEMMs"
