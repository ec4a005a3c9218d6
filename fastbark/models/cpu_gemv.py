"""Exact-mode CPU decode: a float32 matrix-vector kernel in C (native/gemv.c), built at first use.

A decode step is 49 matrix-vector products that only stream weights. oneDNN's packed kernel
streams them at ~18-23 GB/s on the 2-core test machine; this plain C loop over the (N, K) weight,
split over OpenMP threads, reaches ~29 GB/s (RESULTS.md section 8; whole pipeline: section 13).

`GemvLinear` keeps the plain float32 weight. One-position inputs (decode steps: x of shape
(B, 1, K)) go to the C kernel, whose every output follows one fixed order of operations, so a
text gets the same bits alone as inside a batch. Longer inputs (prompt prefills, compute-bound)
go to oneDNN, whose rows also do not depend on the batch.

The library is compiled once per source, flags and CPU into the user's cache folder with the
system C compiler (`cc`). Without a compiler, or if the built kernel fails its self-check, the
engine falls back to oneDNN-packed layers (cpu_kernels.py) and says so once. The same library
holds the int8 mode's products (int8.py) and the fast modes' decode step and attention
(decode_step.py, bf16_attention.py), each checked before use.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import replace_linears

NATIVE = Path(__file__).with_name("native")  # every .c there, with its headers: one library
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastbark" / "native"


def _cpu_signature() -> str:
    """-march=native code must not run on another CPU: the cached library is keyed by the CPU's flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _build(compiler: str) -> Path:
    files = sorted(NATIVE.glob("*.[ch]"))
    sources = [str(f) for f in files if f.suffix == ".c"]
    key = hashlib.sha256(b"".join(f.read_bytes() for f in files)
                         + " ".join([compiler, *FLAGS, platform.machine(), _cpu_signature()]).encode())
    target = _cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([compiler, *FLAGS, *sources, "-o", str(out), "-lm"], check=True,
                           capture_output=True, timeout=120)
            os.replace(out, target)  # atomic: a concurrent build never sees half a file
    return target


@dataclass(frozen=True)
class Int8Kernels:
    linear: object  # one-position rows: quantise, int8 dot, rescale
    quantize: object  # big products: rows -> int8 and scales, before torch._int_mm
    rescale: object  # big products: int32 -> float32, after torch._int_mm


@dataclass(frozen=True)
class NativeKernels:
    """The built library's checked entry points; `s8` is None if its check failed (int8 then uses torch)."""

    f32: object
    s8: Int8Kernels | None
    attention: object  # whole-sequence attention in bfloat16 (native/attention.c; checked in bf16_attention.py)
    decode_step: object  # a causal GPT's whole decode step, int8 or bfloat16 (native/decode_step.c; decode_step.py)
    has_bf16: bool  # whether the library was built for AVX512-BF16


def run_f32(fn, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, threads: int = 1) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T + b -> (M, N), float32, all contiguous."""
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)  # the kernel writes float32, whatever the default
    fn(x.data_ptr(), w.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(), x.shape[0], w.shape[0],
       w.shape[1], threads)
    return y


def run_s8(fn, x: torch.Tensor, w_q: torch.Tensor, w_sum: torch.Tensor, w_scale: torch.Tensor,
           b: torch.Tensor | None, threads: int = 1) -> torch.Tensor:
    """The int8 mode's product (models/int8.py) of float32 rows x (M, K): quantise, int8 dot, rescale."""
    y = torch.empty(x.shape[0], w_q.shape[0], dtype=torch.float32)
    if fn(x.data_ptr(), w_q.data_ptr(), w_sum.data_ptr(), w_scale.data_ptr(), b.data_ptr() if b is not None else None,
          y.data_ptr(), x.shape[0], w_q.shape[0], w_q.shape[1], threads):
        raise MemoryError("fastbark's int8 kernel could not allocate its quantised rows")
    return y


def run_quantize(fn, x: torch.Tensor, threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 rows x (M, K) -> (int8 (M, K), scales (M, 1)), as models/int8.py's quantize_rows."""
    q, scale = torch.empty(x.shape, dtype=torch.int8), torch.empty(x.shape[0], 1, dtype=torch.float32)
    fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), x.shape[0], x.shape[1], threads)
    return q, scale


def run_rescale(fn, acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, b: torch.Tensor | None,
                threads: int = 1) -> torch.Tensor:
    """int32 (M, N) * (x_scale (M, 1) * w_scale (N,)) + b -> float32 (M, N)."""
    y = torch.empty(acc.shape, dtype=torch.float32)
    fn(acc.data_ptr(), x_scale.data_ptr(), w_scale.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(),
       acc.shape[0], acc.shape[1], threads)
    return y


SHAPES_CHECKED = ((1, 7, 45), (5, 10, 96), (9, 4, 130))  # (M, N, K): every tail of the blocks and of K


def _check_f32(fn) -> bool:
    """Against float64, and each row's bits alone against its bits in the batch (the compiler must have
    kept every path's arithmetic alike)."""
    g = torch.Generator().manual_seed(0)
    for m, n, k in SHAPES_CHECKED:
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        y = run_f32(fn, x, w, b)
        if not torch.allclose(y.double(), x.double() @ w.double().T + b.double(), rtol=1e-5, atol=1e-5):
            return False
        if not all(torch.equal(run_f32(fn, x[i: i + 1], w, b), y[i: i + 1]) for i in range(m)):
            return False
    return True


def _check_s8(kernels: Int8Kernels) -> bool:
    """Bit for bit the int8 mode's torch path (Int8Linear without native kernels), for one position per
    row (the decode kernel) and for several (quantise and rescale around torch._int_mm)."""
    from .int8 import Int8Linear  # int8.py imports this module: import here, when first checked
    with torch.random.fork_rng(devices=[]):  # the layers' initialisation must not move the user's RNG
        torch.manual_seed(0)
        for m, n, k in SHAPES_CHECKED:
            layer = Int8Linear(nn.Linear(k, n, bias=n % 2 == 0), native=False)
            for x in (torch.randn(m, 1, k), torch.randn(2, m, k)):
                layer._native = None
                expected = layer(x)
                layer._native = kernels
                if not torch.equal(layer(x), expected):
                    return False
    return True


@functools.cache
def load_kernels() -> NativeKernels | None:
    """The C kernels, or None where they cannot be built or the float32 one fails its check."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or platform.system() != "Linux":
        reason = "no C compiler (cc) found" if compiler is None else f"not built on {platform.system()}"
    else:
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
            f32, s8 = lib.fastbark_gemv_f32, lib.fastbark_linear_s8
            quantize, rescale = lib.fastbark_quantize_rows, lib.fastbark_rescale_s32
            decode, attention = lib.fastbark_decode_step, lib.fastbark_attention_bf16
            f32.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
            s8.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_int]
            quantize.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int]
            rescale.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int]
            decode.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 2 + \
                [ctypes.c_int] + [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_int]
            f32.restype = quantize.restype = rescale.restype = None
            attention.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
            s8.restype = decode.restype = attention.restype = ctypes.c_int
            if _check_f32(f32):
                int8 = Int8Kernels(s8, quantize, rescale)
                return NativeKernels(f32, int8 if _check_s8(int8) else None, attention, decode,
                                     bool(lib.fastbark_has_bf16()))
            reason = "the built kernel failed its self-check"
        except (OSError, subprocess.SubprocessError) as e:
            reason = f"building it failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    warnings.warn(f"fastbark: the C decode kernels are not used: {reason}; decoding with oneDNN and torch instead",
                  stacklevel=2)
    return None


def gemv_available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.float32 and load_kernels() is not None


def _onednn_linear(x, weight, bias):
    """oneDNN on the plain weight (it repacks per call: cheap next to a prefill's compute)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class GemvLinear(nn.Module):
    """nn.Linear for the CPU decode step: one-position inputs use the C kernel, longer ones oneDNN."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().contiguous(), requires_grad=False)
        self.bias = linear.bias
        self._kernel = load_kernels().f32
        self._big = _onednn_linear if torch.backends.mkldnn.is_available() else F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-2] != 1:  # several positions per row: a compute-bound product
            return self._big(x, self.weight, self.bias)
        rows = x.reshape(-1, self.in_features).contiguous()  # (B, 1, K) -> (B, K)
        y = run_f32(self._kernel, rows, self.weight, self.bias, torch.get_num_threads())  # (B, N)
        return y.reshape(*x.shape[:-1], self.out_features)  # (B, N) -> (B, 1, N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, decode=C kernel"


def use_gemv(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` by a GemvLinear, in place."""
    return replace_linears(model, GemvLinear)
