"""The Vocos decoder (models/vocos.py, loading/vocos.py): the `vocos` package's output within 1e-4 for the same
codes on random weights in its real hub layout; `decoder="vocos"` everywhere a decoder runs; bad checkpoints.

The `vocos` package imports torchaudio (no wheel for our torch) for code the test never calls, and builds
its EnCodec feature extractor from downloaded weights: both are stubbed here, as the Suno-reference tests do."""

import contextlib
import sys
import types

import numpy as np
import pytest
import torch
import yaml

import fastbark
from fastbark import BadInput, CheckpointError
from fastbark.cli import main
from fastbark.loading.vocos import load_vocos

CONFIG = {  # charactr/vocos-encodec-24khz's config.yaml, smaller where the sizes are free (dim, layers)
    "feature_extractor": {"class_path": "vocos.feature_extractors.EncodecFeatures",
                          "init_args": {"encodec_model": "encodec_24khz", "bandwidths": [1.5, 3.0, 6.0, 12.0],
                                        "train_codebooks": True}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 128, "dim": 64, "intermediate_dim": 192, "num_layers": 2,
                               "adanorm_num_embeddings": 4}},
    "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": {"dim": 64, "n_fft": 1280, "hop_length": 320,
                                                                  "padding": "same"}},
}


@contextlib.contextmanager
def stubbed_torchaudio():
    """A stand-in torchaudio while the vocos package is imported, removed afterwards (nothing else sees it)."""
    names = ("torchaudio", "torchaudio.functional", "torchaudio.functional.functional")
    audio, functional, inner = (types.ModuleType(n) for n in names)
    inner._hz_to_mel = inner._mel_to_hz = None  # only the MDCT head (not Bark's variant) uses them
    audio.functional, functional.functional = functional, inner
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(dict(zip(names, (audio, functional, inner))))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture(scope="module")
def vocos_reference(tmp_path_factory):
    """(the vocos package's model with random weights, a folder holding them in the hub layout)."""
    with stubbed_torchaudio():
        vocos = pytest.importorskip("vocos")
        from encodec import EncodecModel
        from vocos.feature_extractors import EncodecFeatures
    folder = tmp_path_factory.mktemp("vocos")
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    real = EncodecModel.encodec_model_24khz
    EncodecModel.encodec_model_24khz = staticmethod(lambda pretrained=True: real(pretrained=False))  # no download
    try:
        torch.manual_seed(0)
        model = vocos.Vocos.from_hparams(str(folder / "config.yaml"))
    finally:
        EncodecModel.encodec_model_24khz = real
    assert isinstance(model.feature_extractor, EncodecFeatures)
    with torch.no_grad():  # random weights everywhere, AdaLayerNorm's included (they start at 1 and 0)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("feature_extractor.encodec.")}
    torch.save(state, folder / "pytorch_model.bin")  # as the hub holds it: without the EnCodec model
    return model.eval(), folder


@pytest.mark.parametrize("n_codebooks", [8, 2])
def test_vocos_matches_the_vocos_package(vocos_reference, n_codebooks):
    model, folder = vocos_reference
    ours = load_vocos(folder, "cpu")
    codes = torch.randint(0, 1024, (n_codebooks, 1, 90))  # (K, B, T), as the package takes them
    bandwidth_id = torch.tensor([{2: 0, 8: 2}[n_codebooks]])
    with torch.inference_mode():
        want = model.decode(model.codes_to_features(codes), bandwidth_id=bandwidth_id)  # (1, 90 * 320)
        got = ours(codes.transpose(0, 1))  # (B, K, T)
    assert got.shape == want.shape == (1, 90 * 320)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max())


def test_engine_decodes_with_vocos(hub_dir, vocos_reference):
    _, folder = vocos_reference
    tts = fastbark.Bark.from_pretrained(hub_dir, vocos=folder)  # loaded at first use
    options = dict(seed=2, max_semantic_tokens=12, decoder="vocos")
    out = tts.generate("the dog is cute", **options)
    base = tts.generate("the dog is cute", **{**options, "decoder": "encodec"})
    np.testing.assert_array_equal(out.fine_tokens, base.fine_tokens)  # the same codes
    assert len(out.audio) == len(base.audio) and not np.array_equal(out.audio, base.audio)  # another decoder
    expected = load_vocos(folder, "cpu")(torch.from_numpy(out.fine_tokens)[None])[0].numpy()
    np.testing.assert_array_equal(out.audio, expected)
    story = "The dog is cute. Hello world. The world is cute."
    whole = tts.generate(story, max_chunk_tokens=6, **options)
    streamed = np.concatenate([c.audio for c in tts.stream(story, max_chunk_tokens=6, **options)])
    np.testing.assert_array_equal(streamed, whole.audio)  # stream == generate with Vocos too


def test_bad_vocos_checkpoints(tmp_path, vocos_reference, hub_dir, capsys):
    _, folder = vocos_reference
    with pytest.raises(CheckpointError, match="has no config.yaml"):
        load_vocos(tmp_path, "cpu")
    (tmp_path / "config.yaml").write_text("backbone: [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_vocos(tmp_path, "cpu")
    other = {**CONFIG, "head": {"class_path": "vocos.heads.IMDCTCosHead", "init_args": {}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(CheckpointError, match="head must be vocos.heads.ISTFTHead"):
        load_vocos(tmp_path, "cpu")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_vocos(tmp_path, "cpu")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_vocos(tmp_path, "cpu")
    assert "pwned" not in capsys.readouterr().out
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state.pop("head.out.weight")
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing head.out.weight"):
        load_vocos(tmp_path, "cpu")
    with pytest.raises(BadInput, match="decoder 'hifigan' is unknown; accepted: encodec, vocos"):
        fastbark.GenerationOptions(decoder="hifigan")
    assert main(["say", "hi", "--model", str(hub_dir), "--decoder", "vocos", "--vocos", str(tmp_path / "none"),
                 "-o", str(tmp_path / "x.wav")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_say_with_vocos(hub_dir, vocos_reference, tmp_path):
    _, folder = vocos_reference
    out = tmp_path / "v.wav"
    assert main(["say", "the dog", "--model", str(hub_dir), "--decoder", "vocos", "--vocos", str(folder),
                 "--seed", "1", "--max-semantic-tokens", "8", "-q", "-o", str(out)]) == 0
    assert out.stat().st_size > 44


def test_the_server_decodes_with_vocos_per_request(hub_dir, vocos_reference, tmp_path):
    import httpx
    from test_server import serving
    _, folder = vocos_reference
    tts = fastbark.Bark.from_pretrained(hub_dir, vocos=folder)
    with serving(tts, tmp_path) as (url, _):
        body = {"model": "tts-1", "input": "the dog", "response_format": "pcm", "seed": 3, "max_semantic_tokens": 8}
        vocos = httpx.post(url + "/v1/audio/speech", json={**body, "decoder": "vocos"}, timeout=120).content
        encodec = httpx.post(url + "/v1/audio/speech", json=body, timeout=120).content
        want = tts.generate("the dog", seed=3, max_semantic_tokens=8, decoder="vocos").audio
        assert vocos == (np.clip(want, -1, 1) * 32767).round().astype("<i2").tobytes() and vocos != encodec
