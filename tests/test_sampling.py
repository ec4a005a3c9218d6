"""Sampling agrees with the reference logits processors; seeds make runs reproducible."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from fastbark.errors import BadInput
from fastbark.pipeline.sampling import choose, filter_logits


def reference_filter(logits, temperature, top_k=None, top_p=None):
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (0.7, None, None), (1.3, None, None), (0.7, 50, None), (1.0, 1, None),
    (0.7, None, 0.9), (0.5, None, 0.3), (0.7, 100, 0.8), (1.0, None, 1.0),
])
def test_filter_matches_reference_warpers(temperature, top_k, top_p):
    logits = torch.randn(4, 10_001, generator=torch.Generator().manual_seed(0)) * 3
    ours = filter_logits(logits, temperature, top_k, top_p)
    theirs = reference_filter(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(ours)
    torch.testing.assert_close(ours[kept], theirs[kept])
    if top_k is not None or (top_p is not None and top_p < 1):
        assert (~kept).any(), "the filter must remove tokens in this case"


def test_greedy_is_argmax_and_sampling_follows_the_distribution():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    assert choose(logits, 0)[0].item() == 1
    assert choose(logits, None)[0].item() == 1
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([choose(logits, 1.0, generators=[g])[0] for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.03, rtol=0)
    top1 = torch.stack([choose(logits, 1.0, top_k=1, generators=[g])[0] for _ in range(50)])
    assert (top1 == 1).all()


def test_same_seed_same_tokens(tts):
    a = tts.generate("the dog is cute", seed=123, max_semantic_tokens=30)
    b = tts.generate("the dog is cute", seed=123, max_semantic_tokens=30)
    c = tts.generate("the dog is cute", seed=124, max_semantic_tokens=30)
    np.testing.assert_array_equal(a.semantic_tokens, b.semantic_tokens)
    np.testing.assert_array_equal(a.fine_tokens, b.fine_tokens)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.semantic_tokens, c.semantic_tokens)


def test_stage_seeds(tts):
    first = tts.text_to_semantic("hello", seed=5, max_tokens=20, top_k=50, top_p=0.9)
    assert np.array_equal(first, tts.text_to_semantic("hello", seed=5, max_tokens=20, top_k=50, top_p=0.9))
    coarse = tts.semantic_to_coarse(first, seed=5)
    assert np.array_equal(coarse, tts.semantic_to_coarse(first, seed=5))
    assert np.array_equal(tts.coarse_to_fine(coarse, seed=5), tts.coarse_to_fine(coarse, seed=5))


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"),
    ({"min_eos_p": 0}, "min_eos_p"), ({"max_tokens": 769}, "max semantic tokens"), ({"seed": "x"}, "seed"),
])
def test_bad_sampling_options(tts, kwargs, message):
    with pytest.raises(BadInput, match=message):
        tts.text_to_semantic("hello", **kwargs)


def test_bad_generate_options(tts):
    with pytest.raises(BadInput, match="unknown option"):
        tts.generate("hello", temprature=0.5)
    with pytest.raises(BadInput, match="sliding_window_len"):
        tts.generate("hello", sliding_window_len=500)
