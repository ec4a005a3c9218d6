"""Parity with transformers' Bark on the same random weights: float32, CPU, greedy decoding."""

import numpy as np
import pytest
import torch

import reference as ref
from fastbark.pipeline.decoding import decode_one_token, prefill
from fastbark.pipeline.semantic import semantic_prompt

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("text, voice, min_eos_p", [
    ("the dog is cute", None, None),  # no voice, stops when EOS is the argmax
    ("the dog is cute", None, 0.002),  # the probability stop fires first
    ("café naïve", "v2/en_speaker_1", None),  # with a voice
    ("Hello world [laughs] ♪", "announcer", 0.002),
])
def test_semantic_tokens_match(tts, reference, voice_arrays, text, voice, min_eos_p):
    ours = tts.text_to_semantic(text, voice=voice, temperature=0, min_eos_p=min_eos_p)
    theirs = ref.semantic(reference, tts.tokenize(text), voice_arrays.get(voice), min_eos_p=min_eos_p)
    assert 0 < len(ours) < 768, "the case must end on an EOS stop"
    np.testing.assert_array_equal(ours, theirs)


def test_probability_stop_ends_earlier(tts):
    plain = tts.text_to_semantic("the dog is cute", temperature=0, min_eos_p=None)
    early = tts.text_to_semantic("the dog is cute", temperature=0, min_eos_p=0.002)
    assert len(early) < len(plain)
    np.testing.assert_array_equal(early, plain[: len(early)])


def test_semantic_text_cut_at_256(tts, reference):
    text = " ".join(["hello world the dog is cute"] * 60)  # ~360 wordpieces
    assert len(tts.tokenizer.encode(text)) > 256
    with pytest.warns(UserWarning, match="cut"):
        ours = tts.text_to_semantic(text, temperature=0, min_eos_p=None, max_tokens=40)
    theirs = ref.semantic(reference, tts.tokenizer.encode(text), max_new_tokens=40)
    assert len(ours) == 40
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("voice", [None, "announcer"])
def test_coarse_tokens_match(tts, reference, voice_arrays, voice):
    # 230 semantic tokens -> 690 coarse steps in 12 windows; past 209 tokens the semantic history is trimmed
    semantic = np.random.default_rng(1).integers(0, 10_000, 230)
    ours = tts.semantic_to_coarse(semantic, voice=voice, temperature=0)
    assert ours.shape == (2, 345)
    np.testing.assert_array_equal(ours, ref.coarse(reference, semantic, voice_arrays.get(voice)))


def test_coarse_windows_reuse_the_cache_until_the_context_slides(tts, monkeypatch):
    # 230 semantic tokens, no voice: windows 0-10 start at semantic 0 and coarse 0, so one prefill
    # serves them all; window 11 (semantic index 220 > 209) slides and prefills afresh
    lengths = []
    forward = type(tts.coarse_model).forward
    monkeypatch.setattr(type(tts.coarse_model), "forward",
                        lambda self, embeds, cache, pos: lengths.append(embeds.shape[1]) or forward(self, embeds, cache, pos))
    tts.semantic_to_coarse(np.random.default_rng(1).integers(0, 10_000, 230), temperature=0)
    assert [n for n in lengths if n > 1] == [257, 257 + 630]
    assert len(lengths) == 690  # each window: one start (a prefill or the carried token), then a step per token but its last


@pytest.mark.parametrize("voice", [None, "v2/en_speaker_1"])
def test_fine_tokens_match(tts, reference, voice_arrays, voice):
    coarse = np.random.default_rng(2).integers(0, 1024, (2, 1300))  # three 1024-frame windows
    ours = tts.coarse_to_fine(coarse, voice=voice, temperature=0)
    assert ours.shape == (8, 1300)
    np.testing.assert_array_equal(ours[:2], coarse)
    np.testing.assert_array_equal(ours, ref.fine(reference, coarse, voice_arrays.get(voice)))


def test_decoded_waveform_matches(tts, reference):
    fine = np.random.default_rng(3).integers(0, 1024, (8, 50))
    ours = tts.decode(fine)
    assert ours.dtype == np.float32 and ours.shape == (50 * 320,)
    np.testing.assert_allclose(ours, ref.decode(reference, fine), atol=1e-4, rtol=0)


@torch.no_grad()
def test_one_step_logits_match(tts, reference):
    model = tts.semantic_model
    embeds = semantic_prompt(model, [tts.tokenize("the dog is cute")], None)  # (1, 257, C)
    cache = model.new_cache(batch=1)
    ours = prefill(model, embeds, cache)
    theirs = reference.semantic(inputs_embeds=embeds).logits[:, -1]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # one decode step over the KV cache equals a full forward of the longer sequence
    token = ours.argmax(-1)
    ours = decode_one_token(model, token, cache, 257)
    longer = torch.cat([embeds, model.input_embeds_layer(token)[:, None]], dim=1)
    torch.testing.assert_close(ours, reference.semantic(inputs_embeds=longer).logits[:, -1], atol=1e-4, rtol=0)


@torch.no_grad()
def test_fine_logits_match(tts, reference):
    codes = torch.randint(0, 1025, (1, 1024, 8), generator=torch.Generator().manual_seed(4))
    for k in (2, 7):
        theirs = reference.fine_acoustics(k, input_ids=codes).logits
        torch.testing.assert_close(tts.fine_model(codes, k), theirs, atol=1e-4, rtol=0)
        torch.testing.assert_close(tts.fine_model(codes, k, start=600), theirs[:, 600:], atol=1e-4, rtol=0)


@torch.no_grad()
def test_coarse_logits_match(tts, reference):
    prompt = torch.randint(10_000, 12_096, (1, 300), generator=torch.Generator().manual_seed(5))
    model = tts.coarse_model
    ours = prefill(model, model.input_embeds_layer(prompt), model.new_cache(batch=1))
    torch.testing.assert_close(ours, reference.coarse_acoustics(input_ids=prompt).logits[:, -1], atol=1e-4, rtol=0)


def test_generate_end_to_end_matches_stages(tts):
    out = tts.generate("the dog is cute", voice="announcer", semantic_temperature=0, coarse_temperature=0,
                       fine_temperature=0, min_eos_p=None)
    semantic = tts.text_to_semantic("the dog is cute", voice="announcer", temperature=0, min_eos_p=None)
    np.testing.assert_array_equal(out.semantic_tokens, semantic)
    coarse = tts.semantic_to_coarse(semantic, voice="announcer", temperature=0)
    np.testing.assert_array_equal(out.coarse_tokens, coarse)
    fine = tts.coarse_to_fine(coarse, voice="announcer", temperature=0)
    np.testing.assert_array_equal(out.fine_tokens, fine)
    np.testing.assert_array_equal(out.audio, tts.decode(fine))
    assert out.sample_rate == 24_000 and out.audio.shape == (fine.shape[1] * 320,)
