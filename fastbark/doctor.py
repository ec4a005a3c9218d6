"""`fastbark doctor`: what this machine offers fastbark, and what an engine would choose on it.

For the user whose "GPU is not used": torch's version and build (a CUDA or a CPU-only wheel), the
GPUs torch sees and their memory, MPS, the CPU's instruction sets, the C compiler, and for each
device and dtype the backend and kernels `Bark.from_pretrained` would choose, with each fallback
and its reason. The choices come from the real `backends.select` run on a tiny random model, so
they are what an engine of any size gets (the C kernels are built and checked here too).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field

import torch

from .backends import BackendReport, select
from .backends.base import Models
from .backends.cpu.choice import cpu_identity
from .errors import BadInput
from .models.gpt import CausalGPT, FineGPT, GPTConfig
from .options import DTYPES, EngineOptions

# The CPU features fastbark's kernels care about, as /proc/cpuinfo names them: x86-64, and 64-bit ARM.
CPU_FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "VNNI": ("avx512_vnni", "avx_vnni"),
                "AVX-512 BF16": ("avx512_bf16",), "AMX": ("amx_tile",)}
ARM_FEATURES = {"NEON": ("asimd",), "SVE": ("sve",), "int8 dot product": ("asimddp",), "BF16": ("bf16",),
                "int8 matrix multiply": ("i8mm",)}


@dataclass(frozen=True)
class Choice:
    """What an engine on `device` in `dtype` (and `quantize`) would run, or why it cannot."""

    device: str
    dtype: str
    quantize: str | None
    report: BackendReport | None
    refused: str | None = None  # the BadInput an engine with these options would raise


@dataclass(frozen=True)
class Diagnosis:
    versions: dict[str, str]
    gpus: list[str]
    mps: bool
    cpu: str
    cpu_features: dict[str, bool]
    compiler: str | None
    choices: list[Choice] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["fastbark doctor"] + [f"  {k}: {v}" for k, v in self.versions.items()]
        lines.append(f"  GPUs torch sees: {', '.join(self.gpus) if self.gpus else 'none'}")
        lines.append(f"  MPS (Apple): {'available' if self.mps else 'not available'}")
        features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in self.cpu_features.items())
        lines += [f"  CPU: {self.cpu}", f"  CPU features: {features}",
                  f"  C compiler: {self.compiler or 'none (the C kernels fall back to oneDNN)'}"]
        for c in self.choices:
            head = f"{c.device}, {c.dtype}" + (f", {c.quantize}" if c.quantize else "")
            if c.refused:
                lines.append(f"\n[{head}] not possible: {c.refused}")
            else:
                lines.append(f"\n[{head}]")
                lines += ["  " + line for line in str(c.report).splitlines()]
        if any(c.report and c.report.measured for c in self.choices):
            lines.append("\n(measured: kernels timed on this machine for the doctor's tiny model's shapes; an engine "
                         "times its own shapes at first load and keeps them in ~/.cache/fastbark/native/)")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"versions": self.versions, "gpus": self.gpus, "mps": self.mps, "cpu": self.cpu,
                "cpu_features": self.cpu_features, "compiler": self.compiler,
                "choices": [{"device": c.device, "dtype": c.dtype, "quantize": c.quantize, "refused": c.refused,
                             "backend": c.report.name if c.report else None,
                             "report": str(c.report) if c.report else None,
                             "fallbacks": list(c.report.fallbacks) if c.report else [],
                             "measured": list(c.report.measured) if c.report else []} for c in self.choices]}


def versions() -> dict[str, str]:
    from . import __version__
    cuda = torch.version.cuda
    build = f"CUDA {cuda}" if cuda else ("ROCm " + torch.version.hip if getattr(torch.version, "hip", None)
                                         else "CPU only: this torch cannot use a GPU")
    return {"fastbark": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torch build": build, "triton": triton_version(), "platform": platform.platform()}


def triton_version() -> str:
    """Triton's version, or why the CUDA backend's fused decode step cannot be among its choices here."""
    try:
        import triton
    except ImportError:
        return "not installed: on a GPU the decode step runs on torch's kernels only (a CUDA torch brings Triton)"
    return f"{triton.__version__} (the CUDA backend's fused decode step)"


def gpus() -> list[str]:
    if not torch.cuda.is_available():
        return []
    names = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor})")
    return names


def cpu_info(cpuinfo: str | None = None) -> tuple[str, dict[str, bool]]:
    """The CPU's model name and which of the features its architecture's kernels care about it has (from
    /proc/cpuinfo where there is one)."""
    model, flag_line = cpu_identity(cpuinfo)
    flags = set(flag_line.split())
    arm = bool(flags & {"asimd", "fp"}) or (not flags and platform.machine().lower() in ("arm64", "aarch64"))
    if not flags:  # no /proc/cpuinfo (macOS, Windows): torch's own reading of the vector unit
        capability = torch.backends.cpu.get_cpu_capability().lower()
        flags = {"asimd"} | ({"sve"} if "sve" in capability else set()) if arm else \
            {"avx2"} | ({"avx512f"} if "avx512" in capability else set())
    features = ARM_FEATURES if arm else CPU_FEATURES
    return model, {name: any(f in flags for f in names) for name, names in features.items()}


def compiler() -> str | None:
    cc = shutil.which("cc")
    if cc is None:
        return None
    try:
        first = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        first = []
    return f"{cc} ({first[0]})" if first else cc


def tiny_models(device: torch.device, dtype: torch.dtype) -> Models:
    """Bark's three GPTs at a tiny size with random weights: enough for `select` to choose and check."""
    causal = dict(n_layer=1, n_head=2, n_embd=64, block_size=1024)
    with torch.device(device):
        semantic = CausalGPT(GPTConfig(input_vocab_size=129_600, output_vocab_size=10_048, **causal))
        coarse = CausalGPT(GPTConfig(input_vocab_size=12_096, output_vocab_size=12_096, **causal))
        fine = FineGPT(GPTConfig(input_vocab_size=1056, output_vocab_size=1056, bias=True, **causal))
    return Models(*(m.to(dtype).eval() for m in (semantic, coarse, fine)))


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def choose(device: str, dtype: str, quantize: str | None = None) -> Choice:
    try:
        options = EngineOptions(device=device, dtype=dtype, quantize=quantize)
    except BadInput as e:
        return Choice(device, dtype, quantize, None, str(e))
    with torch.inference_mode():
        report = select(options, tiny_models(options.torch_device, options.torch_dtype))
    return Choice(device, dtype, quantize, report)


def diagnose(devices_to_check: list[str] | None = None) -> Diagnosis:
    model, features = cpu_info()
    choices = []
    for device in devices_to_check or devices():
        for dtype in DTYPES:
            choices.append(choose(device, dtype))
        if device == "cpu":
            choices += [choose(device, dtype, q) for q in ("int8", "int4") for dtype in ("float32", "bfloat16")]
    return Diagnosis(versions(), gpus(), torch.backends.mps.is_available(), model, features, compiler(), choices)
