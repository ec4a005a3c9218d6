"""Random reference checkpoints for the tests and the benchmarks: random weights, the real layouts and
key names (no weights can be downloaded where fastbark is developed).

A transformers `BarkModel` (the reference; `pip install -e ".[test]"`) is saved in the hub layout,
with a BERT vocabulary and voice presets; the same weights can be written as Suno's original `.pt`
files and EnCodec `.th`. `write_random_checkpoint` makes one at tiny or real sizes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

# A small cased wordpiece vocabulary: specials, punctuation, accents, CJK, music, bracket words, letters.
WORDS = ["hello", "world", "laughs", "music", "the", "dog", "is", "cute", "café", "naïve", "über", "señor",
         "ça", "va", "你", "好", "世", "界", "こ", "ん", "♪", "Hello", "World", "I", "a"]
PUNCT = list(".,!?;:'\"-()[]")
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + PUNCT + WORDS + LETTERS + ["é", "ï", "ü", "ñ", "ç"]
         + ["##" + x for x in LETTERS + ["s", "ing", "ed", "é", "ï", "ü", "ñ", "ç"]] + ["##" + w for w in WORDS[:8]])
VOCAB = list(dict.fromkeys(VOCAB))  # unique, order kept

GPT = dict(num_layers=2, num_heads=2, hidden_size=32, block_size=1024)
CODEC = dict(num_filters=4, hidden_size=8, codebook_dim=8, num_lstm_layers=2, upsampling_ratios=[8, 5, 4, 2],
             codebook_size=1024, sampling_rate=24000, target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0])
VOICES = ("v2/en_speaker_1", "announcer")
SIZES = {  # the GPTs of the tests, of bark-small and of bark (large)
    "tiny": dict(num_layers=2, num_heads=2, hidden_size=32),
    "small": dict(num_layers=12, num_heads=12, hidden_size=768),
    "large": dict(num_layers=24, num_heads=16, hidden_size=1024),
}
REAL_CODEC = dict(CODEC, num_filters=32, hidden_size=128, codebook_dim=128)  # EnCodec 24 kHz's real sizes


def bark_config(gpt: dict = GPT, codec: dict = CODEC):
    from transformers import BarkConfig
    return BarkConfig(
        semantic_config=dict(gpt, bias=False, input_vocab_size=129_600, output_vocab_size=10_048),
        coarse_acoustics_config=dict(gpt, bias=False, input_vocab_size=12_096, output_vocab_size=12_096),
        fine_acoustics_config=dict(gpt, bias=True, input_vocab_size=1056, output_vocab_size=1056,
                                   n_codes_total=8, n_codes_given=1),
        codec_config=codec,
    )


def write_random_checkpoint(size: str, folder: Path, seed: int = 0) -> Path:
    """A hub-layout folder with transformers' own random initialisation at `size` (SIZES), plus vocab.txt.
    EnCodec's codebooks are random too: transformers initialises them to zeros, and then every code
    decodes to the same audio, so audio could not tell two token sequences apart."""
    from transformers import BarkModel
    torch.manual_seed(seed)
    config = bark_config(dict(SIZES[size], block_size=1024), CODEC if size == "tiny" else REAL_CODEC)
    model = BarkModel(config)
    randomise_codebooks(model)
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder


def reference_model(seed: int = 0):
    """The transformers BarkModel with random weights, made a little more decisive so greedy runs vary."""
    from transformers import BarkModel, GenerationConfig
    torch.manual_seed(seed)
    model = BarkModel(bark_config()).eval()
    with torch.no_grad():
        for gpt in (model.semantic, model.coarse_acoustics, model.fine_acoustics):
            for p in gpt.parameters():  # larger random weights than the init: peakier logits, fewer near-ties
                if p.dim() >= 2:
                    p.normal_(0, 0.2)
    # EnCodec keeps transformers' init (re-drawn like the GPTs, its decoder's signal died away: every code
    # decoded to the same audio), with random codebooks
    randomise_codebooks(model)
    model.generation_config = GenerationConfig(
        semantic_config={}, coarse_acoustics_config={}, fine_acoustics_config={}, codebook_size=1024)
    return model


def randomise_codebooks(model) -> None:
    """EnCodec's codebook vectors drawn from N(0, 1), so that different codes decode to different audio."""
    with torch.no_grad():
        for q in model.codec_model.quantizer.layers:
            q.codebook.embed.normal_(0, 1)


def random_voice(rng: np.random.Generator, n_semantic: int = 300, n_frames: int = 450) -> dict[str, np.ndarray]:
    coarse = rng.integers(0, 1024, (2, n_frames))
    fine = np.vstack([coarse, rng.integers(0, 1024, (6, n_frames))])
    return {"semantic_prompt": rng.integers(0, 10_000, n_semantic), "coarse_prompt": coarse, "fine_prompt": fine}


def write_hub_dir(model, path: Path, voices: dict[str, dict[str, np.ndarray]]) -> Path:
    """The hub layout: save_pretrained + vocab.txt + speaker_embeddings_path.json and its .npy files."""
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    table = {"repo_or_path": str(path)}
    for name, arrays in voices.items():
        table[name] = {}
        for key, arr in arrays.items():
            rel = f"speaker_embeddings/{name}_{key}.npy"
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(path / rel, arr)
            table[name][key] = rel
    (path / "speaker_embeddings_path.json").write_text(json.dumps(table), encoding="utf-8")
    return path


# our (hub) names -> Suno's nanoGPT names
_TO_SUNO = [
    (r"^input_embeds_layer\.", "transformer.wte."),
    (r"^input_embeds_layers\.", "transformer.wtes."),
    (r"^position_embeds_layer\.", "transformer.wpe."),
    (r"^layernorm_final\.", "transformer.ln_f."),
    (r"^layers\.(\d+)\.layernorm_1\.", r"transformer.h.\1.ln_1."),
    (r"^layers\.(\d+)\.layernorm_2\.", r"transformer.h.\1.ln_2."),
    (r"^layers\.(\d+)\.attn\.att_proj\.", r"transformer.h.\1.attn.c_attn."),
    (r"^layers\.(\d+)\.attn\.out_proj\.", r"transformer.h.\1.attn.c_proj."),
    (r"^layers\.(\d+)\.mlp\.in_proj\.", r"transformer.h.\1.mlp.c_fc."),
    (r"^layers\.(\d+)\.mlp\.out_proj\.", r"transformer.h.\1.mlp.c_proj."),
    (r"^layers\.(\d+)\.attn\.bias$", r"transformer.h.\1.attn.bias"),
]


def _suno_key(key: str) -> str:
    for pattern, repl in _TO_SUNO:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return "_orig_mod." + key


def write_suno_files(model, path: Path, old_vocab_size: bool = False) -> Path:
    """Suno's original text.pt / coarse.pt / fine.pt and EnCodec's original .th, from the reference model."""
    path.mkdir(parents=True, exist_ok=True)
    for name, sub in (("text", model.semantic), ("coarse", model.coarse_acoustics), ("fine", model.fine_acoustics)):
        cfg = sub.config
        args = dict(n_layer=cfg.num_layers, n_head=cfg.num_heads, n_embd=cfg.hidden_size,
                    block_size=cfg.block_size, bias=cfg.bias, dropout=0.0,
                    input_vocab_size=cfg.input_vocab_size, output_vocab_size=cfg.output_vocab_size)
        if name == "fine":
            args.update(n_codes_total=8, n_codes_given=1)
        if old_vocab_size and cfg.input_vocab_size == cfg.output_vocab_size:
            args["vocab_size"] = args.pop("input_vocab_size")
            del args["output_vocab_size"]
        state = {_suno_key(k): v.clone() for k, v in sub.state_dict().items()}
        torch.save({"model_args": args, "model": state, "best_val_loss": np.float64(1.5), "iter_num": 1000},
                   path / f"{name}.pt")
    torch.save(encodec_original_state(model.codec_model), path / "encodec_24khz-d7cc33bc.th")
    return path


def encodec_original_state(codec) -> dict[str, torch.Tensor]:
    """EnCodec's original key names, weight norm as weight_g / weight_v."""
    out = {}
    for key, value in codec.state_dict().items():
        new = key.replace("parametrizations.weight.original0", "weight_g")
        new = new.replace("parametrizations.weight.original1", "weight_v")
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$", new)
        if m:
            side, idx, rest = m.groups()
            layer = getattr(codec, side).layers[int(idx)]
            wrapper = "convtr" if type(layer).__name__ == "EncodecConvTranspose1d" else "conv"
            rest = re.sub(r"^conv\.", f"{wrapper}.{wrapper}.", rest)
            rest = re.sub(r"^(block\.\d+|shortcut)\.conv\.", r"\1.conv.conv.", rest)
            new = f"{side}.model.{idx}.{rest}"
        new = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", new)
        out[new] = value.clone()
    return out


# ---------------------------------------------------------------- voices from recordings

# HuBERT's real feature encoder (320 samples per frame, 400 of receptive field) with tiny widths, and 10 blocks:
# the cloner reads block 9, so the 10th is in the file and dropped by the loader; heads 64 wide, as the real ones
TINY_HUBERT = dict(hidden_size=128, num_hidden_layers=10, num_attention_heads=2, intermediate_size=64,
                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
REAL_HUBERT = dict(TINY_HUBERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, conv_dim=(512,) * 7, num_conv_pos_embeddings=128,
                   num_conv_pos_embedding_groups=16)  # facebook/hubert-base-ls960


def quantizer_state(version: int, features: int, hidden: int, intermediate: int, seed: int = 0) -> dict:
    """A random quantizer checkpoint of the public architecture (gitmylo's CustomTokenizer), as torch.save writes it."""
    from torch import nn
    torch.manual_seed(seed)
    parts = {"lstm": nn.LSTM(features, hidden, 2, batch_first=True),
             "fc": nn.Linear(intermediate if version == 1 else hidden, 10_000)}
    if version == 1:
        parts["intermediate"] = nn.Linear(hidden, intermediate)
    return {f"{name}.{k}": v.detach().clone() for name, module in parts.items() for k, v in module.state_dict().items()}


def write_clone_models(folder: Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """HuBERT (transformers' HubertModel, hub layout) and a version-1 quantizer, random, at tiny or real sizes:
    (the HuBERT folder, the quantizer .pth)."""
    from transformers import HubertConfig, HubertModel
    torch.manual_seed(seed)
    config = TINY_HUBERT if size == "tiny" else REAL_HUBERT
    hubert = HubertModel(HubertConfig(**config)).eval()
    hubert.save_pretrained(folder / "hubert")
    hidden = config["hidden_size"]
    sizes = (hidden, 48, 40) if size == "tiny" else (768, 1024, 4096)
    torch.save(quantizer_state(1, *sizes, seed=seed), folder / "quantizer.pth")
    return folder / "hubert", folder / "quantizer.pth"
