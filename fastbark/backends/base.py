"""What every backend is, and the report of what one chose."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from torch import nn

from ..models.gpt import CausalGPT, FineGPT
from ..options import EngineOptions


class Models(NamedTuple):
    semantic: CausalGPT
    coarse: CausalGPT
    fine: FineGPT


class Backend(ABC):
    """Prepares the three GPTs for a device, in place, through the models' seams only."""

    name: ClassVar[str]

    def __init__(self, options: EngineOptions):
        self.options = options
        self.choices: list = []  # what was measured and chosen on this machine (printable entries)

    @abstractmethod
    def prepare(self, models: Models) -> list[str]:
        """Swap in this backend's code; return the fallbacks taken (what was not used, and why)."""


@dataclass(frozen=True)
class ModelReport:
    linears: dict[str, int]  # kind -> how many: torch, c, onednn, int8-c, int8-torch
    decode_step: str  # blocks (in torch), fused-c, cuda-graph (+compiled) or static; "" for the fine model
    whole_attention: str  # sdpa, sdpa-<kernel SDPA picks> or bf16-c: prefills and fine passes
    one_query_attention: str  # sdpa, masked sdpa-<kernel> or matmul: a step's attention over the cache; "" for fine
    window_passes: str = ""  # the fine model's passes where a backend runs them (cuda-graph); "" otherwise
    kv_cache: str = ""  # the KV caches' dtype where a backend chose one apart from the model's (bfloat16); "" otherwise


@dataclass(frozen=True)
class BackendReport:
    """What `select` chose: the backend, and per model ("semantic", "coarse", "fine") its kernels."""

    name: str
    options: EngineOptions
    models: dict[str, ModelReport]
    fallbacks: tuple[str, ...]  # each: what was not used, and why
    measured: tuple[str, ...] = ()  # kernels chosen by measuring this machine: per shape, the times and the choice

    def __str__(self) -> str:
        o = self.options
        lines = [f"backend {self.name} on {o.device}, {o.dtype}" + (f", {o.quantize}" if o.quantize else "")]
        for name, m in self.models.items():
            linears = ", ".join(f"{n} {kind}" for kind, n in sorted(m.linears.items()))
            step = f"; decode step {m.decode_step}, one-query attention {m.one_query_attention}" if m.decode_step else ""
            step += f", KV cache {m.kv_cache}" if m.kv_cache else ""
            passes = f"; window passes {m.window_passes}" if m.window_passes else ""
            lines.append(f"  {name}: linear layers {linears}; whole-sequence attention {m.whole_attention}"
                         f"{step}{passes}")
        lines += [f"  measured: {m}" for m in self.measured]
        lines += [f"  fallback: {f}" for f in self.fallbacks]
        return "\n".join(lines)


def linear_kind(module: nn.Module) -> str | None:
    """A backend's linear layers say their `kind`; a plain nn.Linear is "torch"; other modules None."""
    return getattr(module, "kind", None) or ("torch" if isinstance(module, nn.Linear) else None)


def describe(name: str, options: EngineOptions, models: Models, fallbacks: tuple[str, ...],
             measured: tuple[str, ...] = ()) -> BackendReport:
    """The report, read off the prepared models themselves."""
    reports = {}
    for key, model in models._asdict().items():
        kinds = Counter(k for k in map(linear_kind, model.modules()) if k is not None)
        kernel = model.layers[0].attn.kernel
        causal = isinstance(model, CausalGPT)
        step = "blocks"
        if causal and (model.decoder or model.decode_step):
            step = getattr(model.decoder or model.decode_step, "kind", "custom")
        passes = getattr(getattr(model, "passes", None), "kind", "")
        kv = str(model.cache_dtype).removeprefix("torch.") if causal and model.cache_dtype is not None else ""
        reports[key] = ModelReport(dict(kinds), step if causal else "", kernel.whole_kind,
                                   kernel.one_query_kind if causal else "", passes, kv)
    return BackendReport(name, options, reports, fallbacks, measured)


__all__ = ["Backend", "BackendReport", "ModelReport", "Models", "describe"]
