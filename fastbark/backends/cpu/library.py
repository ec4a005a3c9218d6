"""fastbark's C kernels (native/*.c): built once per source, flags and CPU, loaded with ctypes.

The library is compiled into the user's cache folder with the system C compiler (`cc`), with the
prefetch distances, register blocks and chunk size that measured fastest on this machine (tuning.py,
which times builds of gemv.c made here; every choice gives the same bits). Its float32 product is
checked against float64 and for batch invariance before use; the other entry points are checked by the modules that use them (int8.py, decode_step.py, attention.py). Without a
compiler, or if the check fails, `load_kernels()` returns None, `kernels_unavailable()` says why,
and the backend falls back to oneDNN and torch (and says so in its report).
"""

from __future__ import annotations

import contextlib
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
from typing import Iterator

import torch

from .choice import ChoiceCache, cpu_identity, machine_key
from .tuning import cached as cached_tuning
from .tuning import tune

NATIVE = Path(__file__).with_name("native")  # every .c there, with its headers: one library
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastbark" / "native"


def sources_digest() -> str:
    """The kernels' sources, hashed: a change to them makes earlier builds and measurements stale."""
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(NATIVE.glob("*.[ch]")))).hexdigest()[:16]


def has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), which the int8 mode needs
    to be fast (RESULTS.md section 17: without them it is slower than float32)."""
    return "vnni" in _cpu_signature()


def _cpu_signature() -> str:
    """-march=native code must not run on another CPU: the cached library is keyed by the CPU's flags."""
    model, flags = cpu_identity()
    return flags or model


def _target(compiler: str, defines: dict[str, str] | None, sources: list[Path]) -> tuple[Path, list[str]]:
    """Where the library of these sources and -D values is cached, and the compiler's flags for it."""
    headers = sorted(NATIVE.glob("*.h"))
    flags = [*FLAGS, *(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))]
    key = hashlib.sha256(b"".join(f.read_bytes() for f in [*headers, *sources])
                         + " ".join([compiler, *flags, *(f.name for f in sources), platform.machine(),
                                     _cpu_signature()]).encode())
    return cache_dir() / f"kernels-{key.hexdigest()[:16]}.so", flags


def _build(compiler: str, defines: dict[str, str] | None = None, sources: list[Path] | None = None) -> Path:
    """The library of `sources` (default: every .c) built with these -D values, from the cache or compiled now."""
    sources = sorted(sources or NATIVE.glob("*.c"))
    target, flags = _target(compiler, defines, sources)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            subprocess.run([compiler, *flags, *map(str, sources), "-o", str(out), "-lm"], check=True,
                           capture_output=True, timeout=120)
            os.replace(out, target)  # atomic: a concurrent build never sees half a file
    return target


@dataclass(frozen=True)
class Products:
    """gemv.c's decode-step products, as a build exports them (tuning.py times one build per candidate)."""

    f32: object
    s8: object
    q4: object
    bf16: object

    def linear_f32(self, x: torch.Tensor, w: torch.Tensor, threads: int) -> torch.Tensor:
        return run_f32(self.f32, x, w, None, threads)

    def linear_s8(self, x: torch.Tensor, w_q: torch.Tensor, w_sum: torch.Tensor, w_scale: torch.Tensor,
                  threads: int) -> torch.Tensor:
        return run_s8(self.s8, x, w_q, w_sum, w_scale, None, threads)

    def linear_q4(self, x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, threads: int) -> torch.Tensor:
        return run_q4(self.q4, x, packed, scale, None, threads)

    def linear_bf16(self, x: torch.Tensor, w: torch.Tensor, threads: int) -> torch.Tensor:
        """Bfloat16 rows x (M, K) times a bfloat16 weight (N, K) -> float32 (M, N): the bfloat16 step's product."""
        y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
        self.bf16(x.data_ptr(), w.data_ptr(), None, y.data_ptr(), x.shape[0], w.shape[0], w.shape[1], threads)
        return y


def bind_products(lib: ctypes.CDLL) -> Products:
    f32, s8, q4, bf16 = lib.fastbark_gemv_f32, lib.fastbark_linear_s8, lib.fastbark_linear_q4, lib.fastbark_linear_bf16
    f32.argtypes = bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    s8.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    q4.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    f32.restype, s8.restype, q4.restype, bf16.restype = None, ctypes.c_int, ctypes.c_int, None
    return Products(f32, s8, q4, bf16)


def build_products(compiler: str, defines: dict[str, str]) -> Products:
    """gemv.c alone, built with these -D values: what tuning.py times, one build per candidate."""
    return bind_products(ctypes.CDLL(str(_build(compiler, defines, [NATIVE / "gemv.c"]))))


@dataclass(frozen=True)
class Int8Kernels:
    linear: object  # one-position rows: quantise, int8 dot, rescale
    quantize: object  # big products: rows -> int8 and scales, before torch._int_mm
    rescale: object  # big products: int32 -> float32, after torch._int_mm
    quantize_float: object  # the via-float route: rows -> their int8 values as float32, and scales
    rescale_float: object  # the via-float route: exact float32 sums -> float32, as `rescale`
    gelu: object  # gelu.h's GELU in place over float32 values (the MLP's first product where not fused into it)


@dataclass(frozen=True)
class AmxKernels:
    """native/amx.c: long products on AMX tiles (checked in amx.py)."""

    packed_bytes: object  # (kind, N, K) -> bytes of a packed weight
    pack: object  # a weight (N, K) int8 or bfloat16 -> its tiles
    s8: object  # the int8 mode's product (quantise, tiles, rescale), or int32 sums of int8 rows
    bf16: object  # the bfloat16 mode's product
    pack_q4: object  # an int4 weight (int4.h's layout) -> bfloat16 tiles
    q4: object  # the int4 mode's fine-pass product: bfloat16 rows times an int4 weight expanded into tiles per call
    s8_plain: object  # s8 over a plain (N, K) int8 weight (the decode stages' prefills)
    bf16_plain: object  # bf16 over a plain (N, K) bfloat16 weight
    attention: object  # whole-sequence attention on the tiles (native/attention.c; checked in attention.py)
    ready: bool  # built for AMX, and this process may use the tiles (the packing runs everywhere)


@dataclass(frozen=True)
class NativeKernels:
    """The built library's entry points. `f32` is checked here; the others where they are used."""

    f32: object
    s8: Int8Kernels  # checked in int8.py
    q4: object  # the int4 mode's one-position product (checked in int4.py)
    dequantize_q4: object  # an int4 weight as float32, for the long route (checked in int4.py)
    attention: object  # whole-sequence attention in bfloat16 (native/attention.c; checked in attention.py)
    decode_step: object  # a causal GPT's whole decode step: float32, int8, int4 or bfloat16 (native/decode_step.c)
    has_bf16: bool  # whether the library was built for AVX512-BF16
    amx: AmxKernels | None = None  # native/amx.c: `ready` where built for AMX and the tiles may be used
    tuning: tuple = ()  # tuning.py's choices (choice.Choice) of the build-time parameters it was built with


def run_f32(fn, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, threads: int = 1) -> torch.Tensor:
    """x (M, K) @ w (N, K)^T + b -> (M, N), float32, all contiguous."""
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)  # the kernel writes float32, whatever the default
    fn(x.data_ptr(), w.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(), x.shape[0], w.shape[0],
       w.shape[1], threads)
    return y


def run_s8(fn, x: torch.Tensor, w_q: torch.Tensor, w_sum: torch.Tensor, w_scale: torch.Tensor,
           b: torch.Tensor | None, threads: int = 1) -> torch.Tensor:
    """The int8 mode's product (int8.py) of float32 rows x (M, K): quantise, int8 dot, rescale."""
    y = torch.empty(x.shape[0], w_q.shape[0], dtype=torch.float32)
    if fn(x.data_ptr(), w_q.data_ptr(), w_sum.data_ptr(), w_scale.data_ptr(), b.data_ptr() if b is not None else None,
          y.data_ptr(), x.shape[0], w_q.shape[0], w_q.shape[1], threads):
        raise MemoryError("fastbark's int8 kernel could not allocate its quantised rows")
    return y


def run_q4(fn, x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, b: torch.Tensor | None,
           threads: int = 1) -> torch.Tensor:
    """The int4 mode's product (int4.py) of float32 rows x (M, K): quantise to int8, int4 group dots, rescale."""
    y = torch.empty(x.shape[0], packed.shape[0], dtype=torch.float32)
    if fn(x.data_ptr(), packed.data_ptr(), scale.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(),
          x.shape[0], packed.shape[0], x.shape[1], threads):
        raise MemoryError("fastbark's int4 kernel could not allocate its quantised rows")
    return y


def run_quantize(fn, x: torch.Tensor, threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 rows x (M, K) -> (int8 (M, K), scales (M, 1)), as int8.py's quantize_rows."""
    q, scale = torch.empty(x.shape, dtype=torch.int8), torch.empty(x.shape[0], 1, dtype=torch.float32)
    fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), x.shape[0], x.shape[1], threads)
    return q, scale


def run_quantize_float(fn, x: torch.Tensor, threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 rows x (M, K) -> (their int8 values as float32 (M, K), scales (M, 1)), as quantize_rows."""
    q, scale = torch.empty(x.shape, dtype=torch.float32), torch.empty(x.shape[0], 1, dtype=torch.float32)
    if fn(x.data_ptr(), q.data_ptr(), scale.data_ptr(), x.shape[0], x.shape[1], threads):
        raise MemoryError("fastbark's int8 kernel could not allocate a quantised row")
    return q, scale


def run_rescale(fn, acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, b: torch.Tensor | None,
                threads: int = 1, in_place: bool = False, gelu: bool = False) -> torch.Tensor:
    """acc (M, N) * (x_scale (M, 1) * w_scale (N,)) + b -> float32 (M, N), with `gelu` through gelu.h's GELU: int32
    sums (`rescale`) or exact float32 ones (`rescale_float`); `in_place`: written over acc (each element read before
    its result is written), which saves a pass of fresh memory over the (M, N) output."""
    y = acc.view(torch.float32) if in_place else torch.empty(acc.shape, dtype=torch.float32)
    fn(acc.data_ptr(), x_scale.data_ptr(), w_scale.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(),
       acc.shape[0], acc.shape[1], int(gelu), threads)
    return y


def run_gelu(fn, y: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """gelu.h's GELU over a contiguous float32 y, in place."""
    fn(y.data_ptr(), y.numel(), threads)
    return y


# (M, N, K): every tail of the blocks and of K, and a K over int8.py's EXACT_FLOAT_K (its products in slices)
SHAPES_CHECKED = ((1, 7, 45), (5, 10, 96), (9, 4, 130), (3, 5, 1100))


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


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _tuning_cache() -> ChoiceCache:
    return ChoiceCache(cache_dir(), machine_key([sources_digest(), "tuning"]))


def first_use() -> bool:
    """Whether loading the kernels now would compile and tune them (nothing built for this machine, torch, thread
    count and sources yet): a wait of several seconds that an entry point may announce."""
    compiler = _compiler()
    if compiler is None or platform.system() != "Linux" or _load.cache_info().currsize:
        return False
    known = cached_tuning(_tuning_cache())
    return known is None or not _target(compiler, known[0], sorted(NATIVE.glob("*.c")))[0].exists()


@contextlib.contextmanager
def _one_builder() -> Iterator[None]:
    """One process at a time builds and tunes the kernels for a cache folder: processes started together (a batch
    job's workers) wait for the first, then read what it measured, instead of timing the same candidates against
    each other's load."""
    import fcntl  # POSIX only: the kernels are built on Linux alone (_load), and this module imports elsewhere too
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "build.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@functools.cache
def _load() -> tuple[NativeKernels | None, str]:
    """The C kernels and '', or None and why not."""
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler (cc) found"
    if platform.system() != "Linux":
        return None, f"not built on {platform.system()}"
    try:
        with _one_builder():
            try:  # the build parameters measured fastest here: one build of gemv.c (its products) per candidate
                defines, tuning = tune(functools.partial(build_products, compiler), _tuning_cache())
            except RuntimeError as e:  # no candidate built and kept the bits: the defaults, whose checks decide
                defines, tuning = {}, ()
                warnings.warn(f"fastbark: the C kernels' tuning failed ({e}); built with their defaults", stacklevel=2)
            path = _build(compiler, defines)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"building it failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    products = bind_products(lib)
    f32, s8, q4 = products.f32, products.s8, products.q4
    quantize, rescale = lib.fastbark_quantize_rows, lib.fastbark_rescale_s32
    quantize_float, rescale_float = lib.fastbark_quantize_rows_f32, lib.fastbark_rescale_f32
    quantize_float.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    quantize_float.restype = ctypes.c_int
    rescale_float.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int] * 2
    rescale_float.restype = None
    gelu = lib.fastbark_gelu_f32
    gelu.argtypes, gelu.restype = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int], None
    decode, attention = lib.fastbark_decode_step, lib.fastbark_attention_bf16
    dequantize_q4 = lib.fastbark_dequantize_q4
    dequantize_q4.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    dequantize_q4.restype = None
    quantize.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    rescale.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int] * 2
    decode.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 2 + [ctypes.c_int64] + [ctypes.c_void_p] * 4 + \
        [ctypes.c_int] + [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_int]
    quantize.restype = rescale.restype = None
    attention.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
    decode.restype = attention.restype = ctypes.c_int
    if not _check_f32(f32):
        return None, "the built kernel failed its self-check"
    return NativeKernels(f32, Int8Kernels(s8, quantize, rescale, quantize_float, rescale_float, gelu), q4, dequantize_q4,
                         attention, decode, bool(lib.fastbark_has_bf16()), _bind_amx(lib), tuning), ""


def _bind_amx(lib: ctypes.CDLL) -> AmxKernels:
    """amx.c's entry points; its products run where `ready` (built for AMX, and Linux granted the tiles)."""
    packed_bytes, pack, s8, bf16 = lib.fastbark_amx_packed_bytes, lib.fastbark_amx_pack, lib.fastbark_amx_s8, \
        lib.fastbark_amx_bf16
    packed_bytes.argtypes, packed_bytes.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
    pack.argtypes, pack.restype = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64], None
    s8.argtypes, s8.restype = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2, ctypes.c_int
    bf16.argtypes, bf16.restype = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2, ctypes.c_int
    pack_q4, q4 = lib.fastbark_amx_pack_q4, lib.fastbark_amx_q4
    pack_q4.argtypes, pack_q4.restype = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int], None
    q4.argtypes, q4.restype = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int], ctypes.c_int
    s8_plain, bf16_plain = lib.fastbark_amx_s8_plain, lib.fastbark_amx_bf16_plain
    s8_plain.argtypes, s8_plain.restype = s8.argtypes, ctypes.c_int
    bf16_plain.argtypes, bf16_plain.restype = bf16.argtypes, ctypes.c_int
    attention = lib.fastbark_attention_amx
    attention.argtypes, attention.restype = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 4 + [ctypes.c_int] * 3, ctypes.c_int
    return AmxKernels(packed_bytes, pack, s8, bf16, pack_q4, q4, s8_plain, bf16_plain, attention,
                      bool(lib.fastbark_amx_ready()))


def load_kernels() -> NativeKernels | None:
    """The C kernels, or None (with a warning, once) where they cannot be built or fail their check."""
    kernels, reason = _load()
    if kernels is None:
        _warn_once(reason)
    return kernels


def kernels_unavailable() -> str:
    """Why the C kernels are not used ('' when they are)."""
    return _load()[1]


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(f"fastbark: the C decode kernels are not used: {reason}; decoding with oneDNN and torch instead",
                  stacklevel=3)


def clear_cache() -> None:
    """Forget the loaded library (tests: build and check it again)."""
    _load.cache_clear()
    _warn_once.cache_clear()
