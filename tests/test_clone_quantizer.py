"""The cloning quantizer (clone/quantizer.py): tokens equal to a plain torch re-implementation of the public
architecture, written here, for both versions; safe loading (weights_only, keys, shapes, sizes)."""

import json
import zipfile

import pytest
import torch
from torch import nn

from fastbark import BadInput, CheckpointError
from fastbark.clone.quantizer import load_quantizer


def public_architecture(version: int) -> nn.Module:
    """gitmylo's CustomTokenizer as its README and checkpoints describe it."""
    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(768, 1024, 2, batch_first=True)
            self.intermediate = nn.Linear(1024, 4096) if version == 1 else None
            self.fc = nn.Linear(4096 if version == 1 else 1024, 10_000)

        def forward(self, x):  # x (N, 768): an unbatched sequence
            x = self.lstm(x)[0]
            if self.intermediate is not None:
                x = self.intermediate(x)
            return torch.log_softmax(self.fc(x), dim=1)
    torch.manual_seed(version)
    return Reference().eval()


@pytest.mark.parametrize("version", [0, 1])
def test_tokens_equal_the_public_architecture(tmp_path, version):
    reference = public_architecture(version)
    state = {k: v for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "quantifier.pth")
    ours = load_quantizer(tmp_path / "quantifier.pth")
    assert ours.version == version
    features = torch.randn(120, 768)  # 2.4 s of HuBERT frames
    with torch.inference_mode():
        want = reference(features).argmax(dim=1)
    got = ours.tokens(features)
    assert got.shape == (120,) and torch.equal(got, want) and len(torch.unique(got)) > 10
    with pytest.raises(BadInput, match="one recording's features"):
        ours.tokens(features[None])  # a batch dimension would make argmax run over time


def test_an_info_file_in_the_zip_is_fine(tmp_path):
    torch.save(public_architecture(1).state_dict(), tmp_path / "q.pth")
    with zipfile.ZipFile(tmp_path / "q.pth", "a") as z:
        z.writestr("q/.info", json.dumps({"version": 1}))
    assert load_quantizer(tmp_path / "q.pth").version == 1


def test_bad_quantizers_are_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"fc.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_quantizer(tmp_path / "evil.pth")
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_quantizer(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="cannot read the quantizer"):
        load_quantizer(tmp_path / "missing.pth")
    state = public_architecture(0).state_dict()
    torch.save({k: v for k, v in state.items() if k != "lstm.bias_hh_l1"}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing lstm.bias_hh_l1"):
        load_quantizer(tmp_path / "partial.pth")
    torch.save({**state, "fc.weight": torch.zeros(10, 1024)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="no fc.weight of shape"):
        load_quantizer(tmp_path / "shape.pth")
    torch.save({**state, "lstm.weight_ih_l0": torch.full((4096, 768), float("nan"))}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        load_quantizer(tmp_path / "nan.pth")
