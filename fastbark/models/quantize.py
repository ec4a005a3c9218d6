"""The int8 rounding fastbark uses wherever it stores numbers in 8 bits: the int8 mode's weights and activation rows
(backends/cpu/int8.py) and the fast modes' int8 KV caches (gpt.py's KVCache). C mirrors it bit for bit
(backends/cpu/native/int8.h's quantize_row, checked when the kernels load)."""

from __future__ import annotations

import torch

INT8_MAX = 127  # symmetric range [-127, 127]; -128 is left out so that negation is exact


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) float -> (x_q (..., K) int8, scale (..., 1) float32) with x ~= x_q * scale: each row's largest
    magnitude maps to 127, halves round to even."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-12).div_(INT8_MAX)  # (..., 1)
    return torch.round(x / scale).to(torch.int8), scale
