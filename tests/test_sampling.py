"""Sampling agrees with the reference logits processors; seeds make runs reproducible."""

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from fastbark.errors import BadInput
from fastbark.pipeline.sampling import Stream, choose, filter_logits


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
    stream = Stream(0)
    draws = torch.stack([choose(logits, 1.0, streams=[stream])[0] for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.03, rtol=0)
    top1 = torch.stack([choose(logits, 1.0, top_k=1, streams=[stream])[0] for _ in range(50)])
    assert (top1 == 1).all()


# ------------------------------------------------------------------ the counter-based sampler (issue 18, item 2)


def test_draws_follow_the_distribution_chi_square():
    """200 streams x 100 draws from a known 6-way distribution, after temperature: a chi-square test
    (5 degrees of freedom; 20.5 is the 0.999 quantile) on the counts."""
    logits = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0, -3.0]])
    want = (logits / 0.8).softmax(-1)[0]
    counts = torch.zeros(6)
    for seed in range(200):
        stream = Stream(seed)
        for _ in range(100):
            counts[choose(logits, 0.8, streams=[stream])[0]] += 1
    expected = want * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, (chi2, counts, expected)


def test_a_rows_draw_depends_only_on_its_seed_and_count():
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(1)) * 2
    alone = [choose(logits[i: i + 1], 0.7, 50, 0.95, streams=[Stream(100 + i)])[0].item() for i in range(5)]
    batched = choose(logits, 0.7, 50, 0.95, streams=[Stream(100 + i) for i in range(5)])[0].tolist()
    assert batched == alone
    # reversed order, other companions: the same tokens for the same (logits, seed)
    again = choose(logits.flip(0), 0.7, 50, 0.95, streams=[Stream(104 - i) for i in range(5)])[0].tolist()
    assert again[::-1] == alone
    # the k-th draw of a stream is the same whatever happened to other streams in between
    s, t = Stream(7), Stream(7)
    first = [choose(logits[:1], 1.0, streams=[s])[0].item() for _ in range(3)]
    choose(logits, 1.0, streams=[Stream(1), Stream(2), Stream(3), Stream(4), Stream(5)])
    assert first == [choose(logits[:1], 1.0, streams=[t])[0].item() for _ in range(3)]
    assert len(set(first + [choose(logits[:1], 1.0, streams=[Stream(8)])[0].item()])) > 1  # seeds matter


def test_the_hash_is_a_fixed_function():
    """The noise is integer arithmetic, so every device computes the same bits: pinned here."""
    from fastbark.pipeline.sampling import draw_keys, gumbel_noise, mix64
    assert mix64(torch.tensor([0, 1, -1])).tolist() == [0, 6238072747940578789, -5417735806833148549]
    mask = (1 << 64) - 1

    def exact(x: int) -> int:  # SplitMix64's finaliser in Python's unbounded integers, modulo 2**64
        x &= mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
        return x - (1 << 64) if x >= 1 << 63 else x
    values = torch.randint(-2**63, 2**63 - 1, (1000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    assert mix64(values).tolist() == [exact(v) for v in values.tolist()]  # int64 products wrap as uint64's
    keys = draw_keys(torch.tensor([0, 2**63 - 1]), torch.tensor([0, 5]))
    noise = gumbel_noise(keys, 4)
    assert noise.shape == (2, 4) and torch.isfinite(noise).all()
    assert torch.equal(noise, gumbel_noise(keys, 4)) and not torch.equal(noise[0], noise[1])


def test_unseeded_streams_follow_torch_manual_seed():
    torch.manual_seed(11)
    a = Stream().seed
    torch.manual_seed(11)
    assert Stream().seed == a


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
