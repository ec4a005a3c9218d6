"""Backends: how the pure models in fastbark/models run on a device.

`select(options, models)` picks a backend from the engine options, prepares the models through
their typed seams (models/gpt.py: `AttentionKernel`, `DecodeStep`, `swap_linears`) and returns a
`BackendReport` of what it chose and what it fell back from, and why. One folder or file each:
- `plain.py`: plain torch, any device (what a CUDA or MPS user runs today);
- `cpu/`: fastbark's C kernels (built at first use), oneDNN-packed and int8 linear layers;
- `cuda/`: static KV caches and decode steps captured as CUDA graphs, SDPA's fused kernels, offload.
"""

from __future__ import annotations

from ..models.gpt import CausalGPT
from ..options import EngineOptions
from .attention import SdpaKernel
from .base import Backend, BackendReport, ModelReport, Models, describe
from .cpu import CpuBackend
from .cuda import CudaBackend
from .plain import TorchBackend

__all__ = ["Backend", "BackendReport", "ModelReport", "select"]


def select(options: EngineOptions, models: Models, backend: Backend | None = None) -> BackendReport:
    """Prepare `models` (semantic, coarse, fine) in place for `options` (with `backend` if one is given);
    report what was chosen."""
    if backend is None:
        name = options.backend
        if name == "auto":
            name = {"cpu": "cpu", "cuda": "cuda"}.get(options.torch_device.type, "torch")
        backend = {"cpu": CpuBackend, "cuda": CudaBackend, "torch": TorchBackend}[name](options)
    fallbacks = backend.prepare(models)
    if options.attention != "auto":  # one named SDPA kernel for the whole-sequence passes, over the backend's
        for model in models:
            kernel = SdpaKernel(options.attention, base=model.layers[0].attn.kernel)
            if isinstance(model, CausalGPT):
                # only the passes' kernel changes
                model.use_kernels(kernel, model.decode_step, model.decoder, model.cache_dtype, model.cache_quantize)
            else:
                model.use_kernels(kernel, model.passes)
    measured = tuple(dict.fromkeys(map(str, backend.choices)))  # a shape shared by two models: once
    return describe(backend.name, options, models, tuple(fallbacks), measured)
