"""The semantic-token quantizer of the community voice-cloning method: HuBERT base features (N, 768) at
~50 Hz -> Bark semantic tokens (N,).

The architecture of gitmylo's `CustomTokenizer` checkpoints (`quantifier_hubert_base_ls960.pth`,
`..._14.pth`, `quantifier_V1_hubert_base_ls960_23.pth`, and community ones for other languages):
`lstm` (LSTM(768, 1024, 2 layers, batch_first), one direction), then version 0: `fc` Linear(1024, 10000);
version 1: `intermediate` Linear(1024, 4096) then `fc` Linear(4096, 10000), no activation between. The
version is read from the weights' shapes. The features are one sequence: `tokens` takes (N, 768) and
refuses a batch dimension, which would silently make argmax run over time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BadInput, CheckpointError
from ..loading.sources import HUB_ID, open_source, required
from ..loading.weights import torch_load

FEATURES, HIDDEN, INTERMEDIATE, SEMANTIC_TOKENS = 768, 1024, 4096, 10_000  # the public checkpoints' sizes
MAX_QUANTIZER_BYTES = 512 << 20  # the public checkpoints are 100-250 MB


@dataclass(frozen=True)
class PublicQuantizer:
    repo: str
    file: str
    language: str
    version: int


# The published quantizers (all read HuBERT base's block-9 features); `--quantizer NAME`. The community ones
# were trained like gitmylo's, on Bark's own speech in their language.
QUANTIZERS = {
    "en-v1": PublicQuantizer("GitMylo/bark-voice-cloning", "quantifier_V1_hubert_base_ls960_23.pth", "English", 1),
    "en-v0": PublicQuantizer("GitMylo/bark-voice-cloning", "quantifier_hubert_base_ls960_14.pth", "English", 0),
    "en-v0-first": PublicQuantizer("GitMylo/bark-voice-cloning", "quantifier_hubert_base_ls960.pth", "English", 0),
    "de": PublicQuantizer("CountFloyd/bark-voice-cloning-german-HuBERT-quantizer",
                          "german-HuBERT-quantizer_14_epoch.pth", "German", 1),
    "es": PublicQuantizer("Lancer1408/bark-es-tokenizer", "es_tokenizer.pth", "Spanish", 1),
    "ja": PublicQuantizer("junwchina/bark-voice-cloning-japanese-HuBERT-quantizer",
                          "japanese-HuBERT-quantizer_24_epoch.pth", "Japanese", 1),
    "pl": PublicQuantizer("Hobis/bark-voice-cloning-polish-HuBERT-quantizer", "polish-HuBERT-quantizer_8_epoch.pth",
                          "Polish", 1),
    "pt": PublicQuantizer("MadVoyager/bark-voice-cloning-portuguese-HuBERT-quantizer",
                          "portuguese-HuBERT-quantizer_24_epoch.pth", "Portuguese", 1),
    "tr": PublicQuantizer("egeadam/bark-voice-cloning-turkish-HuBERT-quantizer", "turkish_model_epoch_14.pth",
                          "Turkish", 1),
}
DEFAULT_QUANTIZER = "en-v1"


def quantizer_file(spec: str | os.PathLike, **hub) -> str:
    """The local path of a quantizer: a name from QUANTIZERS, a `.pth` file, or `owner/repo:file.pth` on the hub."""
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise BadInput(f"quantizer {spec!r}: give a name ({', '.join(QUANTIZERS)}), a .pth file or "
                       f"owner/repo:file.pth", "quantizer")
    text = os.fspath(spec)
    if text in QUANTIZERS:
        repo, file = QUANTIZERS[text].repo, QUANTIZERS[text].file
    elif os.path.isfile(text):
        return text
    elif ":" in text and HUB_ID.match(text.split(":", 1)[0]) and text.endswith(".pth"):
        repo, file = text.split(":", 1)
    else:
        raise BadInput(f"quantizer {text!r} is neither a known name ({', '.join(QUANTIZERS)}), an existing .pth "
                       f"file, nor owner/repo:file.pth", "quantizer")
    return required(open_source(repo, what="quantizer repo", **hub), file, "the quantizer's weights")


class Quantizer(nn.Module):
    def __init__(self, version: int = 1, features: int = FEATURES, hidden: int = HIDDEN,
                 intermediate: int = INTERMEDIATE):
        super().__init__()
        if version not in (0, 1):
            raise ValueError(f"quantizer version 0 or 1, not {version!r}")
        self.version, self.features = version, features
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.intermediate = nn.Linear(hidden, intermediate) if version == 1 else None
        self.fc = nn.Linear(intermediate if version == 1 else hidden, SEMANTIC_TOKENS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, F) -> logits (N, 10000)"""
        x = self.lstm(features[None])[0][0]  # (N, F) -> (1, N, F) -> (1, N, H) -> (N, H)
        if self.intermediate is not None:
            x = self.intermediate(x)
        return self.fc(x)

    @torch.inference_mode()
    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, F) of one recording -> semantic tokens (N,) int64"""
        if features.dim() != 2 or features.shape[1] != self.features:
            raise BadInput(f"the quantizer takes one recording's features, (frames, {self.features}); got "
                           f"{tuple(features.shape)} (a batch dimension would make argmax run over time)")
        return self(features.float()).argmax(-1)


def load_quantizer(path: str | os.PathLike, device="cpu") -> Quantizer:
    """A quantizer checkpoint (`.pth`), loaded with weights_only=True; every key and shape checked. Its sizes
    come from its weights (the public ones: 768 -> 1024 (-> 4096) -> 10000)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(f"cannot read the quantizer {path!r}: {e.strerror}") from None
    if size > MAX_QUANTIZER_BYTES:
        raise CheckpointError(f"the quantizer {path!r} is {size >> 20} MB; a quantizer is 100-250 MB")
    state = torch_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"the quantizer {path!r} is not a state dict of tensors")
    fc, ih, hh = (state.get(k) for k in ("fc.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0"))
    if fc is None or fc.dim() != 2 or fc.shape[0] != SEMANTIC_TOKENS:
        raise CheckpointError(f"the quantizer {path!r} has no fc.weight of shape (10000, 1024) (version 0) or "
                              f"(10000, 4096) (version 1)")
    if ih is None or hh is None or ih.dim() != 2 or hh.dim() != 2 or ih.shape[0] != 4 * hh.shape[1]:
        raise CheckpointError(f"the quantizer {path!r} has no 2-layer LSTM (lstm.weight_ih_l0, lstm.weight_hh_l0)")
    hidden = hh.shape[1]
    version = 0 if fc.shape[1] == hidden and "intermediate.weight" not in state else 1
    model = Quantizer(version, features=ih.shape[1], hidden=hidden, intermediate=fc.shape[1])
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"the quantizer {path!r} does not match version {model.version}: "
                              f"{'missing ' + ', '.join(missing) if missing else ''}"
                              f"{'; ' if missing and unexpected else ''}"
                              f"{'unexpected ' + ', '.join(unexpected) if unexpected else ''}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"the quantizer {path!r}: {key} has shape {tuple(tensor.shape)}, version "
                                  f"{model.version} needs {tuple(expected[key].shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"the quantizer {path!r}: {key} holds NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()
