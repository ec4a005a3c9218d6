"""Write loaded Bark parts as a local hub-layout folder (config.json, model.safetensors, tokenizer, voices)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..errors import BadInput
from ..models.gpt import GPTConfig
from .layouts import Parts


def _gpt_config_dict(config: GPTConfig, model_type: str) -> dict:
    d = dict(model_type=model_type, num_layers=config.n_layer, num_heads=config.n_head,
             hidden_size=config.n_embd, block_size=config.block_size, input_vocab_size=config.input_vocab_size,
             output_vocab_size=config.output_vocab_size, bias=config.bias, dropout=0.0)
    if model_type == "fine_acoustics":
        d.update(n_codes_total=config.n_codes_total, n_codes_given=config.n_codes_given, tie_word_embeddings=True)
    return d


def _codec_config_dict(parts: Parts) -> dict:
    d = asdict(parts.codec.config)
    d.update(model_type="encodec", upsampling_ratios=list(d["upsampling_ratios"]), codebook_dim=d["hidden_size"],
             use_causal_conv=True, norm_type="weight_norm", pad_mode="reflect", trim_right_ratio=1.0,
             use_conv_shortcut=True, normalize=False, chunk_length_s=None, overlap=None,
             # 6 kbps at 75 Hz x 10 bits = the 8 codebooks kept
             target_bandwidths=[1.5, 3.0, 6.0])
    return d


def _codec_state(parts: Parts) -> dict[str, torch.Tensor]:
    """Codec weights in the current transformers form: weight norm as parametrizations (g = ||w||, v = w)."""
    out = {}
    for key, value in parts.codec.state_dict().items():
        if key.endswith("conv.weight"):
            base = key[: -len("weight")]
            norm = torch.linalg.vector_norm(value.float(), dim=tuple(range(1, value.dim())), keepdim=True)
            out[base + "parametrizations.weight.original0"] = norm
            out[base + "parametrizations.weight.original1"] = value
        else:
            out[key] = value
    return out


def check_destination(destination: str | os.PathLike) -> Path:
    """A new (or empty) folder that can be made: checked before anything is loaded."""
    if not isinstance(destination, (str, os.PathLike)) or not os.fspath(destination):
        raise BadInput(f"the destination must be a folder path, got {destination!r}")
    dst = Path(destination).expanduser()
    if dst.is_file():
        raise BadInput(f"{dst} is a file; give a new folder")
    if dst.exists() and any(dst.iterdir()):
        raise BadInput(f"{dst} exists and is not empty; give a new folder")
    existing = next(p for p in (dst, *dst.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write {dst}: {existing} is not a writable folder")
    return dst


def write_hub_layout(parts: Parts, destination: str | Path, voices: bool = True) -> Path:
    """Write `parts` as a hub-layout folder: into a temporary folder beside it, renamed when complete."""
    dst = check_destination(destination)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent))
    try:
        _write(parts, tmp, voices)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)  # an empty dst folder is replaced too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _write(parts: Parts, dst: Path, voices: bool) -> None:
    config = {
        "model_type": "bark", "architectures": ["BarkModel"],
        "semantic_config": _gpt_config_dict(parts.semantic.config, "semantic"),
        "coarse_acoustics_config": _gpt_config_dict(parts.coarse.config, "coarse_acoustics"),
        "fine_acoustics_config": _gpt_config_dict(parts.fine.config, "fine_acoustics"),
        "codec_config": _codec_config_dict(parts),
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (dst / "generation_config.json").write_text(json.dumps({"codebook_size": 1024}), encoding="utf-8")
    state = {}
    for prefix, model in (("semantic.", parts.semantic), ("coarse_acoustics.", parts.coarse),
                          ("fine_acoustics.", parts.fine)):
        for key, value in model.state_dict().items():
            if not key.startswith("lm_heads.") or prefix != "fine_acoustics.":  # tied to input embeddings
                state[prefix + key] = value.contiguous()
    state.update({"codec_model." + k: v.contiguous() for k, v in _codec_state(parts).items()})
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    parts.tokenizer.save(dst / "tokenizer.json")
    if voices and parts.voices is not None:
        table = {}
        for name in parts.voices.names():
            voice = parts.voices.get(name)
            table[name] = {}
            for key in ("semantic_prompt", "coarse_prompt", "fine_prompt"):
                rel = f"speaker_embeddings/{name}_{key}.npy"
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(dst / rel, getattr(voice, key))
                table[name][key] = rel
        (dst / "speaker_embeddings_path.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
