"""Backends: how the pure models in fastbark/models run on a device.

`select(options, models)` picks a backend from the engine options, prepares the models through
their typed seams (models/gpt.py: `AttentionKernel`, `DecodeStep`, `swap_linears`) and returns a
`BackendReport` of what it chose and what it fell back from, and why. One folder or file each:
- `plain.py`: plain torch, any device (what a CUDA or MPS user runs today);
- `cpu/`: fastbark's C kernels (built at first use), oneDNN-packed and int8 linear layers;
- `cuda/`: the empty place for a CUDA backend (see its docstring).
"""

from __future__ import annotations

from ..models.gpt import CausalGPT
from ..options import EngineOptions
from .attention import SdpaKernel
from .base import Backend, BackendReport, ModelReport, Models, describe
from .cpu import CpuBackend
from .plain import TorchBackend

__all__ = ["Backend", "BackendReport", "ModelReport", "select"]


def select(options: EngineOptions, models: Models) -> BackendReport:
    """Prepare `models` (semantic, coarse, fine) in place for `options`; report what was chosen."""
    name = options.backend
    notes = []
    if name == "auto":
        name = "cpu" if options.torch_device.type == "cpu" else "torch"
        if options.torch_device.type == "cuda":
            notes.append("no CUDA backend yet (backends/cuda): plain torch on CUDA")
    backend: Backend = {"cpu": CpuBackend, "torch": TorchBackend}[name](options)
    fallbacks = backend.prepare(models)
    if options.attention != "auto":  # one named SDPA kernel for the whole-sequence passes, over the backend's
        for model in models:
            kernel = SdpaKernel(options.attention, base=model.layers[0].attn.kernel)
            if isinstance(model, CausalGPT):
                model.use_kernels(kernel, model.decode_step)
            else:
                model.use_kernels(kernel)
    return describe(backend.name, options, models, tuple(notes + fallbacks))
