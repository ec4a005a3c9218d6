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

import torch
from torch import nn

from ..errors import BadInput, CheckpointError
from ..loading.weights import torch_load

FEATURES, HIDDEN, INTERMEDIATE, SEMANTIC_TOKENS = 768, 1024, 4096, 10_000
MAX_QUANTIZER_BYTES = 512 << 20  # the public checkpoints are ~100 MB


class Quantizer(nn.Module):
    def __init__(self, version: int = 1):
        super().__init__()
        if version not in (0, 1):
            raise ValueError(f"quantizer version 0 or 1, not {version!r}")
        self.version = version
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.intermediate = nn.Linear(HIDDEN, INTERMEDIATE) if version == 1 else None
        self.fc = nn.Linear(INTERMEDIATE if version == 1 else HIDDEN, SEMANTIC_TOKENS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, 768) -> logits (N, 10000)"""
        x = self.lstm(features[None])[0][0]  # (N, 768) -> (1, N, 768) -> (1, N, 1024) -> (N, 1024)
        if self.intermediate is not None:
            x = self.intermediate(x)
        return self.fc(x)

    @torch.inference_mode()
    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, 768) of one recording -> semantic tokens (N,) int64"""
        if features.dim() != 2 or features.shape[1] != FEATURES:
            raise BadInput(f"the quantizer takes one recording's features, (frames, {FEATURES}); got "
                           f"{tuple(features.shape)} (a batch dimension would make argmax run over time)")
        return self(features.float()).argmax(-1)


def load_quantizer(path: str | os.PathLike, device="cpu") -> Quantizer:
    """A quantizer checkpoint (`.pth`), loaded with weights_only=True; every key and shape checked."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(f"cannot read the quantizer {path!r}: {e.strerror}") from None
    if size > MAX_QUANTIZER_BYTES:
        raise CheckpointError(f"the quantizer {path!r} is {size >> 20} MB; a quantizer is ~100 MB")
    state = torch_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"the quantizer {path!r} is not a state dict of tensors")
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2 or fc.shape[0] != SEMANTIC_TOKENS or fc.shape[1] not in (HIDDEN, INTERMEDIATE):
        raise CheckpointError(f"the quantizer {path!r} has no fc.weight of shape (10000, 1024) (version 0) or "
                              f"(10000, 4096) (version 1)")
    model = Quantizer(version=1 if fc.shape[1] == INTERMEDIATE else 0)
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
