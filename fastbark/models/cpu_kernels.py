"""CPU decode speed: linear layers with weights pre-packed for oneDNN.

A decode step is a chain of matrix-vector products, bound by how fast the weights stream from
memory. On a 2-core AVX-512 machine oneDNN's packed layout streams them ~1.5x faster than
`F.linear` (benchmarks/linear_bandwidth.py, RESULTS.md section 8). The packed
tensor replaces the plain weight, so memory does not grow. Results agree with `F.linear` to
float32 rounding (about 1e-6 relative).

Batch invariance: for some shapes (a long reduction, like the MLP's 3072 -> 768) oneDNN computes a
single float32 row on a different path from two or more rows, and the two differ in the last
bits. Every multi-row product agrees bitwise row by row, whatever the number of rows. So each
layer checks once, when it is packed, whether its one-row product matches; where it does not, a
lone row is computed as two rows. A text decoded alone then gets exactly the numbers it gets
inside a batch, and the layers that need no padding pay nothing for it.
"""

from __future__ import annotations

import torch
from torch import nn

PACKING_ROWS_HINT = 4  # decode steps run 1-16 rows; one layout, packed for 4 rows, serves them all


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """nn.Linear's forward over a oneDNN-packed weight. The plain weight is not kept."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACKING_ROWS_HINT)
        self.bias = linear.bias
        self.pad_single_row = not self._one_row_matches_batch(linear.weight.dtype)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

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


def replace_linears(model: nn.Module, make) -> nn.Module:
    """Replace every nn.Linear of `model`, at any depth, by `make(linear)`, in place; where `make`
    returns None the layer stays as it is."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            new = make(child)
            if new is not None:
                setattr(model, name, new)
        else:
            replace_linears(child, make)
    return model


def pack_linear(linear: nn.Linear) -> PackedLinear | None:
    """`linear` as a PackedLinear, or None where oneDNN cannot pack it on this machine."""
    try:
        return PackedLinear(linear)
    except (RuntimeError, NotImplementedError):
        return None


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` by a PackedLinear, in place. A layer that oneDNN cannot
    pack on this machine (a build without these kernels) stays a plain nn.Linear."""
    return replace_linears(model, pack_linear)
