"""The Vocos decoder from its hub layout (`charactr/vocos-encodec-24khz`: `config.yaml` and
`pytorch_model.bin`, or `model.safetensors`): the YAML read with `yaml.safe_load` (size-limited, only the
known classes accepted), the weights with `weights_only=True` or safetensors, built on the meta device."""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError
from ..models.vocos import BANDWIDTHS, CODEBOOKS_PER_BANDWIDTH, Vocos, VocosConfig
from .sources import MAX_JSON_BYTES, first_of, open_source, required
from .weights import Renamed, build, read_weights

DEFAULT_VOCOS = "charactr/vocos-encodec-24khz"
CLASSES = {"feature_extractor": "vocos.feature_extractors.EncodecFeatures", "backbone": "vocos.models.VocosBackbone",
           "head": "vocos.heads.ISTFTHead"}  # the only variant that reads EnCodec's codes


def vocos_config(path: str) -> VocosConfig:
    """VocosConfig from Vocos's config.yaml; CheckpointError naming what does not fit."""
    import yaml
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise CheckpointError(f"Vocos config {path!r} is larger than {MAX_JSON_BYTES >> 20} MB")
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"Vocos config {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"Vocos config {path!r} must be a YAML mapping")
    args = {}
    for part, class_path in CLASSES.items():
        entry = config.get(part)
        if not isinstance(entry, dict) or entry.get("class_path") != class_path:
            found = entry.get("class_path") if isinstance(entry, dict) else entry
            raise CheckpointError(f"Vocos config {path!r}: {part} must be {class_path} (the EnCodec variant), "
                                  f"not {found!r}")
        args[part] = entry.get("init_args") or {}
    features, backbone, head = args["feature_extractor"], args["backbone"], args["head"]
    bandwidths = tuple(float(b) for b in features.get("bandwidths", BANDWIDTHS))
    if features.get("encodec_model", "encodec_24khz") != "encodec_24khz" or bandwidths != BANDWIDTHS or \
            head.get("padding", "same") != "same":
        raise CheckpointError(f"Vocos config {path!r}: fastbark reads the 24 kHz EnCodec variant with bandwidths "
                              f"{list(BANDWIDTHS)} and 'same' padding")
    try:
        return VocosConfig(input_channels=backbone["input_channels"], dim=backbone["dim"],
                           intermediate_dim=backbone["intermediate_dim"], num_layers=backbone["num_layers"],
                           adanorm_num_embeddings=backbone.get("adanorm_num_embeddings"), n_fft=head["n_fft"],
                           hop_length=head["hop_length"], n_codebooks=CODEBOOKS_PER_BANDWIDTH[max(bandwidths)])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"Vocos config {path!r} is incomplete or wrong: {type(e).__name__}: {e}") from None


def load_vocos(source: str | os.PathLike, device, **hub) -> Vocos:
    """Vocos from a hub id or a folder in its hub layout, in float32 on `device`."""
    files = open_source(source, what="Vocos decoder", **hub)
    config = vocos_config(required(files, "config.yaml", "Vocos's hyperparameters"))
    path = first_of(files, ["model.safetensors", "pytorch_model.bin"]) or \
        required(files, "pytorch_model.bin", "Vocos's weights")
    # its training code may store the EnCodec model it was trained beside: not needed to decode codes
    weights = Renamed(read_weights(path), lambda k: None if k.startswith("feature_extractor.encodec.") else k)
    return build(lambda: Vocos(config), weights, device=torch.device(device), dtype=torch.float32, what="Vocos")
