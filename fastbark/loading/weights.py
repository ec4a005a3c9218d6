"""Reading weights safely, mapping every checkpoint layout onto our module names, and building models.

Layouts: the Hugging Face Bark state dict (`semantic.`, `coarse_acoustics.`, `fine_acoustics.`,
`codec_model.` prefixes), Suno's nanoGPT `.pt` files, EnCodec's original `.th` and the hub layout of
`facebook/encodec_24khz`. All renaming lives here.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from ..constants import N_FINE_CODEBOOKS
from ..errors import CheckpointError

Tensors = Mapping[str, torch.Tensor]


# ---------------------------------------------------------------- reading files

class SafetensorsFile(Mapping):
    """Lazy, read-only view of a .safetensors file: a tensor is read when asked for."""

    def __init__(self, path: str):
        try:
            self._file = safe_open(path, framework="pt")
        except Exception as e:
            raise CheckpointError(f"cannot read {path!r} as safetensors: {e}") from None
        self._keys = list(self._file.keys())

    def __getitem__(self, key):
        return self._file.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def _numpy_globals() -> list:
    """The globals Suno's `.pt` files need besides tensors: a numpy float scalar (`best_val_loss`)."""
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    allowed = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64")]
    return allowed


def torch_load(path: str) -> dict:
    """torch.load with weights_only=True; only numpy scalars are allowed beyond tensors. Memory-mapped when possible."""
    with torch.serialization.safe_globals(_numpy_globals()):
        for mmap in (True, False):  # mmap needs the zip format; very old files are not zips
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if mmap and "mmap" in str(e):
                    continue
                raise CheckpointError(f"cannot read {path!r}: {e}") from None
            except Exception as e:  # UnpicklingError for anything that is not plain weights
                raise CheckpointError(f"refusing to load {path!r}: it is not a plain weights file "
                                      f"(weights_only=True rejected it: {str(e).splitlines()[0]})") from None
    raise AssertionError("unreachable")


def read_weights(path: str) -> Tensors:
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    state = torch_load(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path!r} does not hold a state dict")
    return state


class MergedWeights(Mapping):
    """Several weight files (a sharded checkpoint) seen as one mapping."""

    def __init__(self, parts: Iterable[Tensors]):
        self._where = {key: part for part in parts for key in part}

    def __getitem__(self, key):
        return self._where[key][key]

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


# ---------------------------------------------------------------- renaming

class Renamed(Mapping):
    """A lazy view of `source` under new names: rename(old) -> new name, or None to drop the key."""

    def __init__(self, source: Tensors, rename: Callable[[str], str | None]):
        self._source = source
        self._names = {}
        for old in source:
            new = rename(old)
            if new is not None:
                self._names[new] = old

    def __getitem__(self, key):
        return self._source[self._names[key]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def with_prefix(prefix: str) -> Callable[[str], str | None]:
    """Keep the keys under `prefix` (e.g. 'semantic.'), without it."""
    return lambda k: k[len(prefix):] if k.startswith(prefix) else None


# Suno's nanoGPT names -> the Hugging Face names our modules use
_SUNO_GPT_RULES = [
    (r"^transformer\.wte\.", "input_embeds_layer."),
    (r"^transformer\.wtes\.", "input_embeds_layers."),
    (r"^transformer\.wpe\.", "position_embeds_layer."),
    (r"^transformer\.ln_f\.", "layernorm_final."),
    (r"^transformer\.h\.(\d+)\.ln_1\.", r"layers.\1.layernorm_1."),
    (r"^transformer\.h\.(\d+)\.ln_2\.", r"layers.\1.layernorm_2."),
    (r"^transformer\.h\.(\d+)\.attn\.c_attn\.", r"layers.\1.attn.att_proj."),
    (r"^transformer\.h\.(\d+)\.attn\.c_proj\.", r"layers.\1.attn.out_proj."),
    (r"^transformer\.h\.(\d+)\.mlp\.c_fc\.", r"layers.\1.mlp.in_proj."),
    (r"^transformer\.h\.(\d+)\.mlp\.c_proj\.", r"layers.\1.mlp.out_proj."),
    (r"^transformer\.h\.(\d+)\.attn\.bias$", r"layers.\1.attn.bias"),  # causal-mask buffer, dropped later
]


def suno_gpt_name(key: str) -> str:
    key = key.removeprefix("_orig_mod.")  # torch.compile's wrapper prefix
    for pattern, repl in _SUNO_GPT_RULES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


# EnCodec's original names -> the Hugging Face names
_SUNO_CODEC_RULES = [
    (r"^decoder\.model\.", "decoder.layers."),
    (r"^encoder\.model\.", "encoder.layers."),
    (r"\.convtr\.convtr\.", ".conv."),
    (r"\.conv\.conv\.", ".conv."),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
]


def encodec_name(key: str, half: str = "decoder") -> str | None:
    """Original or hub EnCodec key -> our name, for one half ("decoder" or "encoder"): the other is dropped."""
    if key.startswith("encoder." if half == "decoder" else "decoder."):
        return None
    for pattern, repl in _SUNO_CODEC_RULES:
        key = re.sub(pattern, repl, key)
    return key


class FoldedWeightNorm(Mapping):
    """Weight norm folded into plain weights: `X.weight_g`/`X.weight_v` (or `X.parametrizations.weight.
    original0/1`) become `X.weight = g * v / ||v||`, the norm taken over every dim but `dim` (EnCodec: 0, the
    output channels; HuBERT's position convolution: 2, the kernel taps)."""

    _PAIRS = ((".weight_g", ".weight_v"), (".parametrizations.weight.original0", ".parametrizations.weight.original1"))

    def __init__(self, source: Tensors, dim: int = 0):
        self._source, self._dim = source, dim
        self._folded: dict[str, tuple[str, str]] = {}
        self._plain = []
        for key in source:
            for g_suffix, v_suffix in self._PAIRS:
                if key.endswith(g_suffix):
                    base = key[: -len(g_suffix)]
                    self._folded[base + ".weight"] = (key, base + v_suffix)
                    break
                if key.endswith(v_suffix):
                    break
            else:
                self._plain.append(key)

    def __getitem__(self, key):
        if key in self._folded:
            g_key, v_key = self._folded[key]
            if v_key not in self._source:
                raise KeyError(v_key)
            v, g = self._source[v_key].float(), self._source[g_key].float()
            want = tuple(n if d == self._dim else 1 for d, n in enumerate(v.shape))
            if tuple(g.shape) != want or v.dim() <= self._dim:  # torch._weight_norm does not check: it may crash
                raise CheckpointError(f"weight norm {g_key} has shape {tuple(g.shape)}; with {v_key} of shape "
                                      f"{tuple(v.shape)} it must be {want}")
            return torch._weight_norm(v, g, self._dim)
        return self._source[key]

    def __iter__(self):
        return iter([*self._plain, *self._folded])

    def __len__(self):
        return len(self._plain) + len(self._folded)


# ---------------------------------------------------------------- building

def _ignorable(key: str) -> bool:
    """Keys a checkpoint may carry that no module of ours needs."""
    return (key.endswith(".attn.bias")  # causal-mask buffer of the causal GPTs
            or key.endswith(("codebook.inited", "codebook.cluster_size", "codebook.embed_avg"))
            or key.startswith("quantizer.layers.") and int(key.split(".")[2]) >= N_FINE_CODEBOOKS)  # codebooks Bark never uses


def build(factory: Callable[[], nn.Module], weights: Tensors, *, device: torch.device, dtype: torch.dtype,
          what: str, optional: Callable[[nn.Module, set], None] | None = None) -> nn.Module:
    """Make the module on the meta device and assign `weights` to it, cast tensor by tensor.

    No second copy of the model is ever held: each tensor is read, cast and placed once.
    `optional(model, missing)` may fill keys the file may lack (tied weights) and remove them from `missing`.
    """
    with torch.device("meta"):
        model = factory()
    expected = model.state_dict()
    missing = set(expected) - set(weights)
    if optional is not None:
        optional(model, missing)
    if missing:
        shown = ", ".join(sorted(missing)[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"the {what} weights are incomplete: missing {shown}")
    unexpected = [k for k in weights if k not in expected and not _ignorable(k)]
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:8])
        raise CheckpointError(f"the {what} weights do not match its config: unexpected {shown}"
                              f"{' ...' if len(unexpected) > 8 else ''}")
    state = {}
    for key, ref in expected.items():
        if key not in weights:
            continue  # filled by `optional`
        tensor = weights[key]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise CheckpointError(f"the {what} weight {key} has shape {tuple(tensor.shape)}, "
                                  f"the config gives {tuple(ref.shape)}")
        state[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
            cast = f" after the cast to {state[key].dtype}" if state[key].dtype != tensor.dtype else ""
            raise CheckpointError(f"the {what} weight {key} holds NaN or infinite values{cast}: the checkpoint "
                                  f"is damaged, or its values do not fit this dtype")
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval().requires_grad_(False)


