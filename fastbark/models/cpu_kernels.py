"""CPU decode speed: linear layers with weights pre-packed for oneDNN.

A decode step is a chain of matrix-vector products, bound by how fast the weights stream from
memory. On a 2-core AVX-512 machine `F.linear` reads them at ~13 GB/s; oneDNN's packed layout
reads them at ~25 GB/s, close to the memory bandwidth (see benchmarks/RESULTS.md). The packed
tensor replaces the plain weight, so memory does not grow. Results agree with `F.linear` to
float32 rounding (about 1e-6 relative).
"""

from __future__ import annotations

import torch
from torch import nn


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """nn.Linear's forward over a oneDNN-packed weight. The plain weight is not kept."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # batch-size hint 1: tuned for decode steps; other batch sizes run correctly too
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` by a PackedLinear, in place."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, PackedLinear(child))
        else:
            pack_linears(child)
    return model
