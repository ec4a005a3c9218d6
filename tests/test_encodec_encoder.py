"""EnCodec's encoder half (models/encodec.py): codes identical to transformers' `EncodecModel.encode(bandwidth=6.0)`
on random weights, from the hub layout and from the original `.th` file; the decoder round-trips as
transformers' does. The building block of voices made from recordings (issue 19)."""

import numpy as np
import pytest
import torch

from fastbark.loading.layouts import load_codec, load_encoder
from fastbark.testing import REAL_CODEC


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' EnCodec 24 kHz with random weights (codebooks included), saved in the hub layout."""
    from transformers import EncodecConfig, EncodecModel
    torch.manual_seed(0)
    config = EncodecConfig(**REAL_CODEC)  # 32 codebooks (24 kbps), as the real one has
    model = EncodecModel(config).eval()
    with torch.no_grad():  # codebooks drawn from what the encoder gives (as k-means starts), so that codes vary
        frames = model.encoder(torch.randn(1, 1, 1024 * 320) * 0.1)[0].T  # (1, 128, 1024) -> (1024, 128)
        centre = frames.mean(0)
        for k, layer in enumerate(model.quantizer.layers):
            layer.codebook.embed.copy_((frames - centre) * 0.5**k + (centre if k == 0 else 0))
    folder = tmp_path_factory.mktemp("encodec")
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("seconds", [0.5, 1.37])
def test_codes_equal_transformers(reference, seconds):
    model, folder = reference
    ours = load_encoder(folder, "cpu")
    audio = torch.randn(2, int(seconds * 24_000)) * 0.1  # two clips: the batch is not mixed
    with torch.inference_mode():
        want = model.encode(audio[:, None], bandwidth=6.0).audio_codes[0]  # (1, B, 8, T) -> (B, 8, T)
        got = ours(audio)
    assert got.shape == want.shape and got.shape[1] == 8
    assert torch.equal(got, want)
    assert len(torch.unique(got)) > 100  # real codes, not one repeated entry


def test_the_decoder_round_trips_as_transformers_does(reference):
    model, folder = reference
    encoder, decoder = load_encoder(folder, "cpu"), load_codec(folder, "cpu")
    audio = torch.randn(1, 24_000) * 0.1
    with torch.inference_mode():
        codes = encoder(audio)
        want = model.decode(codes[None], [None]).audio_values[:, 0]  # (1, B, K, T) in, (B, 1, T) out
        got = decoder(codes)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_the_original_th_layout(reference, tmp_path):
    """Suno's and Meta's `encodec_24khz-d7cc33bc.th` names (encoder.model.N.conv.conv.weight_g ...)."""
    model, folder = reference
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("encoder.layers.", "encoder.model.").replace("decoder.layers.", "decoder.model.")
        key = key.replace(".conv.weight", ".conv.conv.weight").replace(".conv.bias", ".conv.conv.bias")
        key = key.replace("quantizer.layers.", "quantizer.vq.layers.").replace(".codebook.", "._codebook.")
        state[key] = value
    torch.save(state, tmp_path / "encodec.th")
    audio = torch.randn(1, 12_000) * 0.1
    with torch.inference_mode():
        np.testing.assert_array_equal(load_encoder(tmp_path / "encodec.th", "cpu")(audio),
                                      load_encoder(folder, "cpu")(audio))
