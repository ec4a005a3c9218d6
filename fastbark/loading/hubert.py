"""HuBERT base for voice cloning, from the hub layout (`facebook/hubert-base-ls960`: config.json with
model.safetensors or pytorch_model.bin, read with weights_only=True) or fairseq's `hubert_base_ls960.pt`.

fairseq's file pickles fairseq's own config objects beside the weights. It is read without running any of
them: every global the pickle names (listed by torch without unpickling) is replaced by an inert stand-in
that only stores what it is given, so nothing the file names is imported or called; only `model`'s tensors
are used. Either way the weights are renamed to the hub names, the position convolution's weight norm is
folded, and the model is built on the meta device with every key and shape checked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.hubert import Hubert, HubertConfig
from .layouts import read_state
from .sources import open_source, read_json
from .weights import FoldedWeightNorm, Renamed, Tensors, build

DEFAULT_HUBERT = "facebook/hubert-base-ls960"
MAX_HUBERT_BYTES = 2 << 30  # HuBERT base is 0.38 GB, large 1.3 GB
POS_CONV_NORM_DIM = 2  # the position convolution's weight norm keeps one scale per kernel tap

# what the hub config may say, and what fastbark's HuBERT is (anything else is another architecture)
_SUPPORTED = {"feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_bias": False,
              "feat_proj_layer_norm": True, "hidden_act": "gelu", "feat_extract_activation": "gelu",
              "conv_pos_batch_norm": False}
_CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                "conv_kernel", "conv_stride", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
                "layer_norm_eps")

# fairseq name -> hub name (transformers' conversion script has the same map)
_FAIRSEQ_RULES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.0\.2\.", "feature_extractor.conv_layers.0.layer_norm."),
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^encoder\.pos_conv\.0\.", "encoder.pos_conv_embed.conv."),
    (r"\.self_attn\.", ".attention."),
    (r"\.self_attn_layer_norm\.", ".layer_norm."),
    (r"\.fc1\.", ".feed_forward.intermediate_dense."),
    (r"\.fc2\.", ".feed_forward.output_dense."),
]


def hubert_config(d: dict, output_layer: int) -> HubertConfig:
    for key, value in _SUPPORTED.items():
        if key in d and d[key] != value:
            raise CheckpointError(f"HuBERT config: {key} is {d[key]!r}; fastbark runs HuBERT base's architecture "
                                  f"({key} {value!r})")
    try:
        return HubertConfig(**{k: d[k] for k in _CONFIG_KEYS if k in d}, output_layer=output_layer)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"HuBERT config is not usable: {e}") from None


def config_from_weights(weights: Tensors, output_layer: int) -> HubertConfig:
    """A file without a config (fairseq's .pt): the sizes read from the weights' shapes. The strides are
    HuBERT's (every HuBERT and wav2vec 2.0 uses them) and a head is 64 wide (base: 12 heads, large: 16)."""
    try:
        convs = [weights[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(len(HubertConfig.conv_stride))]
        pos = weights["encoder.pos_conv_embed.conv.weight"]
        hidden = weights["feature_projection.projection.weight"].shape[0]
        blocks = {int(m.group(1)) for k in weights if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        return HubertConfig(hidden_size=hidden, num_hidden_layers=len(blocks), num_attention_heads=max(1, hidden // 64),
                            intermediate_size=weights["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
                            conv_dim=tuple(w.shape[0] for w in convs), conv_kernel=tuple(w.shape[2] for w in convs),
                            num_conv_pos_embeddings=pos.shape[2], num_conv_pos_embedding_groups=hidden // pos.shape[1],
                            output_layer=output_layer)
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"the HuBERT weights are not HuBERT base's or large's: {type(e).__name__}: {e}") from None


def _hub_name(output_layer: int | None):
    """Hub name -> ours; None for what is not built (`output_layer` None: every block is kept)."""
    def rename(key: str) -> str | None:
        key = key.removeprefix("hubert.")  # HubertForCTC and friends keep the model under `hubert.`
        layer = re.match(r"encoder\.layers\.(\d+)\.", key)
        if layer and output_layer is not None and int(layer.group(1)) >= output_layer \
                or not key.startswith(("feature_", "encoder.")):
            return None  # blocks after the output layer, masking embeddings, heads
        return key
    return rename


def _fairseq_name(output_layer: int | None):
    hub = _hub_name(output_layer)

    def rename(key: str) -> str | None:
        for pattern, repl in _FAIRSEQ_RULES:
            key = re.sub(pattern, repl, key)
        return hub(key)
    return rename


class _Inert(dict):
    """Stands in for any class or function a fairseq pickle names: takes what it is given, does nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass


def read_pickled_state(path: str) -> Tensors:
    """The state dict in a torch checkpoint: a plain one, or fairseq's `model` entry, whose neighbours'
    objects are replaced by inert stand-ins (a plain file names no globals to replace)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:
        raise CheckpointError(f"cannot read {path!r} as a torch checkpoint: {str(e).splitlines()[0]}") from None
    stand_ins = [(type(name.rsplit(".", 1)[-1], (_Inert,), {}), name) for name in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path!r} as a fairseq checkpoint: {str(e).splitlines()[0]}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path!r} holds no state dict of tensors (plain, or fairseq's 'model')")
    return state


def load_hubert(source: str | os.PathLike = DEFAULT_HUBERT, device="cpu", *, output_layer: int = 9, **hub) -> Hubert:
    """HuBERT up to block `output_layer`, in float32: from a hub id or folder (hub layout) or a fairseq `.pt`."""
    if Path(source).is_file():
        path = os.fspath(source)
        if os.path.getsize(path) > MAX_HUBERT_BYTES:
            raise CheckpointError(f"HuBERT file {path!r} is larger than {MAX_HUBERT_BYTES >> 30} GB")
        if path.endswith(".safetensors"):
            raise CheckpointError(f"{path!r}: give the folder that holds a hub-layout HuBERT (config.json beside "
                                  f"its weights), or fairseq's .pt file")
        state = read_pickled_state(path)
        hub_names = any(k.removeprefix("hubert.").startswith("feature_projection.") for k in state)
        every = Renamed(state, _hub_name(None) if hub_names else _fairseq_name(None))  # all blocks, to count them
        config = config_from_weights(FoldedWeightNorm(every, dim=POS_CONV_NORM_DIM), output_layer)
        weights: Tensors = Renamed(state, _hub_name(output_layer) if hub_names else _fairseq_name(output_layer))
    else:
        files = open_source(source, what="HuBERT model", **hub)
        config_path = files.get("config.json")
        config = hubert_config(read_json(config_path, "HuBERT config") if config_path else {}, output_layer)
        weights = Renamed(read_state(files, "HuBERT"), _hub_name(output_layer))
    return build(lambda: Hubert(config), FoldedWeightNorm(weights, dim=POS_CONV_NORM_DIM),
                 device=torch.device(device), dtype=torch.float32, what="HuBERT")

