"""The checkpoint layouts users hold, each turned into the same set of loaded parts.

- hub layout (`suno/bark-small`, `suno/bark`, or a folder like them): config.json + one state dict
  holding all four models + tokenizer files + speaker_embeddings_path.json;
- Suno's original files: text*.pt / coarse*.pt / fine*.pt (nanoGPT `model_args` + `model`), with
  EnCodec from its original `.th` file or the hub layout of `facebook/encodec_24khz`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.encodec import CodecConfig, EncodecDecoder, EncodecEncoder
from ..models.gpt import CausalGPT, FineGPT, GPTConfig
from ..text.tokenizer import TextTokenizer
from ..voices import VoiceLibrary
from .sources import HubFiles, LocalFiles, first_of, open_source, read_json, required
from .weights import (FoldedWeightNorm, MergedWeights, Renamed, Tensors, build, encodec_name, read_weights,
                      suno_gpt_name, torch_load, with_prefix)

SUBMODELS = {"semantic": "semantic_config", "coarse_acoustics": "coarse_acoustics_config",
             "fine_acoustics": "fine_acoustics_config"}
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]
TOKENIZER_FILES = ["tokenizer.json", "vocab.txt"]
DEFAULT_CODEC = "facebook/encodec_24khz"
DEFAULT_TOKENIZER = "google-bert/bert-base-multilingual-cased"  # what Suno's original code tokenizes with


@dataclass
class Parts:
    semantic: CausalGPT
    coarse: CausalGPT
    fine: FineGPT
    codec: EncodecDecoder
    tokenizer: TextTokenizer
    voices: VoiceLibrary | None
    source: str


# ---------------------------------------------------------------- configs

def gpt_config_from_hub(d: Mapping) -> GPTConfig:
    try:
        return GPTConfig(n_layer=d["num_layers"], n_head=d["num_heads"], n_embd=d["hidden_size"],
                         input_vocab_size=d["input_vocab_size"], output_vocab_size=d["output_vocab_size"],
                         block_size=d.get("block_size", 1024), bias=d.get("bias", False),
                         n_codes_total=d.get("n_codes_total", 8), n_codes_given=d.get("n_codes_given", 1))
    except KeyError as e:
        raise CheckpointError(f"config.json: a sub-model config lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: a sub-model config is wrong: {e}") from None


def gpt_config_from_suno(args: Mapping) -> GPTConfig:
    """nanoGPT `model_args`; old files have one `vocab_size` for input and output."""
    try:
        vocab_in = args.get("input_vocab_size", args.get("vocab_size"))
        vocab_out = args.get("output_vocab_size", args.get("vocab_size"))
        if vocab_in is None or vocab_out is None:
            raise KeyError("input_vocab_size")
        return GPTConfig(n_layer=args["n_layer"], n_head=args["n_head"], n_embd=args["n_embd"],
                         input_vocab_size=vocab_in, output_vocab_size=vocab_out,
                         block_size=args.get("block_size", 1024), bias=bool(args.get("bias", False)),
                         n_codes_total=args.get("n_codes_total", 8), n_codes_given=args.get("n_codes_given", 1))
    except KeyError as e:
        raise CheckpointError(f"model_args lacks {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"model_args is wrong: {e}") from None


def codec_config_from_hub(d: Mapping) -> CodecConfig:
    if not isinstance(d, Mapping):
        raise CheckpointError(f"codec config must be a JSON object, not {type(d).__name__}")
    fields = CodecConfig.__dataclass_fields__
    kwargs = {k: (tuple(v) if k == "upsampling_ratios" else v) for k, v in d.items() if k in fields}
    if not d.get("use_causal_conv", True) or d.get("norm_type", "weight_norm") != "weight_norm":
        raise CheckpointError("codec config: only the causal, weight-normed EnCodec 24 kHz decoder is supported")
    try:
        return CodecConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"codec config is wrong: {e}") from None


def codec_config_from_weights(weights: Tensors) -> CodecConfig:
    """EnCodec's original `.th` has no config: read the sizes from the (renamed) decoder weights."""
    try:
        first = weights["decoder.layers.0.conv.weight"]  # (channels, hidden, kernel)
        layer_ids = sorted({int(k.split(".")[2]) for k in weights if k.startswith("decoder.layers.")})
        last = weights[f"decoder.layers.{layer_ids[-1]}.conv.weight"]  # (channels_out, filters, kernel)
        resblocks = {i for i in layer_ids if f"decoder.layers.{i}.shortcut.conv.weight" in weights}
        upsamplers = [i for i in layer_ids[2:-1] if i not in resblocks]
        ratios = tuple(weights[f"decoder.layers.{i}.conv.weight"].shape[-1] // 2 for i in upsamplers)
        block = weights[f"decoder.layers.{min(resblocks)}.block.1.conv.weight"]  # (hidden, dim, kernel)
        n_lstm = sum(1 for k in weights if k.startswith("decoder.layers.1.lstm.weight_ih_l"))
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"the EnCodec weights are not those of a SEANet decoder ({e})") from None
    return CodecConfig(hidden_size=first.shape[1], num_filters=last.shape[1], upsampling_ratios=ratios,
                       num_lstm_layers=n_lstm, kernel_size=first.shape[-1], last_kernel_size=last.shape[-1],
                       residual_kernel_size=block.shape[-1], compress=block.shape[1] // block.shape[0],
                       num_residual_layers=len(resblocks) // len(ratios), audio_channels=last.shape[0])


# ---------------------------------------------------------------- models

def _fine_tied(model: FineGPT, missing: set) -> None:
    """lm_heads may be absent from the file: they are tied to input embeddings (filled after loading)."""
    missing.difference_update({f"lm_heads.{i}.weight" for i in range(len(model.lm_heads))})


def build_gpts(configs: dict[str, GPTConfig], weights: dict[str, Tensors], device, dtype):
    semantic = build(lambda: CausalGPT(configs["semantic"]), weights["semantic"], device=device, dtype=dtype,
                     what="semantic model")
    coarse = build(lambda: CausalGPT(configs["coarse_acoustics"]), weights["coarse_acoustics"], device=device,
                   dtype=dtype, what="coarse model")
    fine = build(lambda: FineGPT(configs["fine_acoustics"]), weights["fine_acoustics"], device=device,
                 dtype=dtype, what="fine model", optional=_fine_tied)
    embeds = fine.input_embeds_layers[fine.config.n_codes_given:]
    if all(h.weight.is_meta or torch.equal(h.weight, e.weight) for h, e in zip(fine.lm_heads, embeds)):
        fine.tie_weights()  # one copy of the tied weights, whether or not the file repeats them
    return semantic, coarse, fine


def build_codec(config: CodecConfig, weights: Tensors, device) -> EncodecDecoder:
    """The codec always runs in float32: it is small (7.4M parameters in the decoder) and sensitive."""
    weights = FoldedWeightNorm(Renamed(weights, encodec_name))
    return build(lambda: EncodecDecoder(config), weights, device=device, dtype=torch.float32, what="EnCodec")


def load_tokenizer(files) -> TextTokenizer | None:
    path = first_of(files, TOKENIZER_FILES)
    return TextTokenizer.from_file(path) if path else None


def read_state(files, what: str) -> Tensors:
    """The checkpoint's state dict; sharded ones (an index.json) are merged lazily."""
    for name in WEIGHT_FILES:
        path = files.get(name)
        if path is None:
            continue
        if not name.endswith(".index.json"):
            return read_weights(path)
        weight_map = read_json(path, "shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"shard index {path!r} has no 'weight_map' of file names")
        shards = sorted(set(weight_map.values()))
        return MergedWeights(read_weights(required(files, shard, f"a shard of {name}")) for shard in shards)
    if isinstance(files, HubFiles) and files.unreachable:
        raise CheckpointError(files.offline_message())
    raise CheckpointError(f"{files} has no weights for {what}: expected one of {', '.join(WEIGHT_FILES)}")


# ---------------------------------------------------------------- layouts

def load_hub_layout(files, device, dtype) -> Parts:
    config = read_json(required(files, "config.json", "the Bark config"), "Bark config")
    if not all(isinstance(config.get(key), dict) for key in SUBMODELS.values()):
        raise CheckpointError(f"{files}/config.json is not a Bark config (it needs {', '.join(SUBMODELS.values())})")
    state = read_state(files, "Bark")
    configs = {name: gpt_config_from_hub(config[key]) for name, key in SUBMODELS.items()}
    semantic, coarse, fine = build_gpts(configs, {n: Renamed(state, with_prefix(n + ".")) for n in SUBMODELS},
                                        device, dtype)
    codec = build_codec(codec_config_from_hub(config.get("codec_config", {})),
                        Renamed(state, with_prefix("codec_model.")), device)
    tokenizer = load_tokenizer(files)
    if tokenizer is None:
        raise CheckpointError(f"{files} has no tokenizer: expected {' or '.join(TOKENIZER_FILES)}")
    presets = files.get("speaker_embeddings_path.json")
    voices = VoiceLibrary(read_json(presets, "voice preset table"),
                          lambda rel: required(files, rel, "a voice preset file")) if presets else None
    return Parts(semantic, coarse, fine, codec, tokenizer, voices, str(files))


SUNO_FILES = {"semantic": ("text_2.pt", "text.pt"), "coarse_acoustics": ("coarse_2.pt", "coarse.pt"),
              "fine_acoustics": ("fine_2.pt", "fine.pt")}


def is_suno_layout(files) -> bool:
    return isinstance(files, LocalFiles) and any(files.get(n) for names in SUNO_FILES.values() for n in names)


def load_suno_layout(files: LocalFiles, device, dtype, *, tokenizer=None, codec=None, **hub) -> Parts:
    """Suno's text/coarse/fine `.pt` files (the large `_2` set when both are present)."""
    configs, weights = {}, {}
    for name, candidates in SUNO_FILES.items():
        path = first_of(files, list(candidates))
        if path is None:
            raise CheckpointError(f"{files} has {' / '.join(candidates)} missing (Suno's original layout needs "
                                  f"text, coarse and fine .pt files)")
        checkpoint = torch_load(path)
        if not isinstance(checkpoint, Mapping) or "model" not in checkpoint or "model_args" not in checkpoint:
            raise CheckpointError(f"{path} is not one of Suno's checkpoints (no 'model' / 'model_args')")
        configs[name] = gpt_config_from_suno(checkpoint["model_args"])
        weights[name] = Renamed(checkpoint["model"], suno_gpt_name)
    semantic, coarse, fine = build_gpts(configs, weights, device, dtype)
    codec_model = load_codec(codec or _local_codec(files) or DEFAULT_CODEC, device, **hub)
    text = _tokenizer_from(tokenizer, hub) if tokenizer else load_tokenizer(files) or _tokenizer_from(DEFAULT_TOKENIZER, hub)
    prompts = next((files.root / d for d in ("prompts", "assets/prompts") if (files.root / d).is_dir()), None)
    voices = VoiceLibrary.from_npz_folder(prompts) if prompts else None
    return Parts(semantic, coarse, fine, codec_model, text, voices, str(files))


def _local_codec(files: LocalFiles) -> str | None:
    ths = files.list("*.th")
    if ths:
        return str(files.root / ths[0])
    folder = files.root / "encodec_24khz"
    return str(folder) if folder.is_dir() else None


def _tokenizer_from(source: str | os.PathLike, hub: dict) -> TextTokenizer:
    if Path(source).is_file():
        return TextTokenizer.from_file(source)
    files = open_source(source, **hub, what="tokenizer")
    tokenizer = load_tokenizer(files)
    if tokenizer is None:
        raise CheckpointError(f"{files} has no tokenizer: expected {' or '.join(TOKENIZER_FILES)}")
    return tokenizer


def load_encoder(source: str | os.PathLike, device, **hub) -> EncodecEncoder:
    """EnCodec 24 kHz's encoder half (8 codebooks), in float32: what turns a recording into a voice's acoustic
    prompts. From EnCodec's original `.th` file, the `facebook/encodec_24khz` hub layout, or a Bark checkpoint
    (the hub layout keeps the whole EnCodec model under `codec_model.`; Suno's layout: its folder's `.th`, else
    `facebook/encodec_24khz`)."""
    def rename(key: str) -> str | None:
        return encodec_name(key, "encoder")
    if Path(source).is_file():
        weights = Renamed(read_weights(os.fspath(source)), rename)
        config = codec_config_from_weights(FoldedWeightNorm(Renamed(read_weights(os.fspath(source)), encodec_name)))
    else:
        files = open_source(source, **hub, what="codec")
        config_path = files.get("config.json")
        if config_path is None and is_suno_layout(files):
            return load_encoder(_local_codec(files) or DEFAULT_CODEC, device, **hub)
        config = read_json(config_path, "EnCodec config") if config_path else None
        state = read_state(files, "EnCodec")
        if config is not None and isinstance(config.get("codec_config"), dict):  # a Bark checkpoint
            config, state = config["codec_config"], Renamed(state, with_prefix("codec_model."))
        config = codec_config_from_hub(config) if config is not None else \
            codec_config_from_weights(FoldedWeightNorm(Renamed(state, encodec_name)))
        weights = Renamed(state, rename)
    return build(lambda: EncodecEncoder(config), FoldedWeightNorm(weights), device=device, dtype=torch.float32,
                 what="EnCodec encoder")


def load_codec(source: str | os.PathLike, device, **hub) -> EncodecDecoder:
    """EnCodec 24 kHz from its original `.th` file, or a folder / hub repo in the `facebook/encodec_24khz` layout."""
    if Path(source).is_file():
        weights = Renamed(read_weights(os.fspath(source)), encodec_name)
        return build_codec(codec_config_from_weights(FoldedWeightNorm(weights)), weights, device)
    files = open_source(source, **hub, what="codec")
    config_path = files.get("config.json")
    weights = read_state(files, "EnCodec")
    if config_path:
        config = codec_config_from_hub(read_json(config_path, "EnCodec config"))
    else:
        config = codec_config_from_weights(FoldedWeightNorm(Renamed(weights, encodec_name)))
    return build_codec(config, weights, device)


def load_parts(source, device, dtype, *, tokenizer=None, codec=None, revision=None, cache_dir=None,
               local_files_only=False, download=None) -> Parts:
    hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if download is not None:
        hub["download"] = download
    files = open_source(source, **hub)
    if is_suno_layout(files) and files.get("config.json") is None:
        return load_suno_layout(files, device, dtype, tokenizer=tokenizer, codec=codec, **hub)
    if isinstance(files, LocalFiles) and files.get("config.json") is None:
        raise CheckpointError(f"{files} holds no Bark checkpoint: expected config.json with model.safetensors or "
                              f"pytorch_model.bin (hub layout), or Suno's text.pt, coarse.pt and fine.pt")
    parts = load_hub_layout(files, device, dtype)
    if tokenizer is not None:
        parts.tokenizer = _tokenizer_from(tokenizer, hub)
    return parts
