"""Batches: every text's tokens in a batch equal its tokens generated alone (float32, CPU, greedy)."""

import shutil

import numpy as np
import pytest
import torch

from fastbark.options import CoarseOptions, FineOptions
from fastbark.pipeline.coarse import generate_coarse
from fastbark.pipeline.fine import generate_fine

GREEDY = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, min_eos_p=None)
TEXTS = ["the dog is cute", "Hello world [laughs] ♪", "café naïve", "I a the"]


def assert_same(a, b):
    np.testing.assert_array_equal(a.semantic_tokens, b.semantic_tokens)
    np.testing.assert_array_equal(a.coarse_tokens, b.coarse_tokens)
    np.testing.assert_array_equal(a.fine_tokens, b.fine_tokens)
    np.testing.assert_array_equal(a.audio, b.audio)


@pytest.mark.parametrize("voice", [None, "v2/en_speaker_1"])
def test_batch_equals_alone(tts, voice):
    batch = tts.generate(TEXTS, voice=voice, max_semantic_tokens=300, **GREEDY)
    lengths = {len(b.semantic_tokens) for b in batch}
    assert len(lengths) > 1, "the texts must stop at different steps for this test to mean anything"
    for text, in_batch in zip(TEXTS, batch):
        assert_same(in_batch, tts.generate(text, voice=voice, max_semantic_tokens=300, **GREEDY))


def test_batch_size_chunks_and_voice_lists(tts):
    voices = ["announcer", None, "announcer", "v2/en_speaker_1"]
    batch = tts.generate(TEXTS, voice=voices, batch_size=2, max_semantic_tokens=40, **GREEDY)
    for text, voice, in_batch in zip(TEXTS, voices, batch):
        assert_same(in_batch, tts.generate(text, voice=voice, max_semantic_tokens=40, **GREEDY))


def test_voices_share_the_semantic_batch(tts, monkeypatch):
    """Texts with different voices run the semantic stage as one batch (its prompt has one length for every
    voice) and the other stages one batch per voice; each text still gets what it gets alone, sampled."""
    import fastbark.engine
    from fastbark.longform.narrate import derive_seed
    sizes = {"semantic": [], "coarse": []}
    for stage in sizes:
        real = getattr(fastbark.engine, f"generate_{stage}")
        monkeypatch.setattr(fastbark.engine, f"generate_{stage}",
                            lambda model, rows, *a, _real=real, _stage=stage, **k:
                            sizes[_stage].append(len(rows)) or _real(model, rows, *a, **k))
    voices = ["announcer", None, "announcer", "v2/en_speaker_1"]
    batch = tts.generate(TEXTS, voice=voices, seed=7, max_semantic_tokens=40)
    assert sizes["semantic"] == [4] and sorted(sizes["coarse"]) == [1, 1, 2]
    monkeypatch.undo()
    for i, (text, voice) in enumerate(zip(TEXTS, voices)):
        assert_same(batch[i], tts.generate(text, voice=voice, seed=derive_seed(7, i), max_semantic_tokens=40))


@pytest.mark.parametrize("voice_name", [None, "announcer"])  # without a voice, rows leave a reused cache
def test_coarse_batch_of_different_lengths(tts, voice_name):
    rng = np.random.default_rng(7)
    semantic = [rng.integers(0, 10_000, n) for n in (230, 15, 90, 1)]
    options = CoarseOptions(temperature=0)
    voice = tts.load_voice(voice_name)
    batch = generate_coarse(tts.coarse_model, semantic, voice, options)
    for s, b in zip(semantic, batch):
        np.testing.assert_array_equal(b, generate_coarse(tts.coarse_model, [s], voice, options)[0])
    assert [b.shape[1] for b in batch] == [345, 22, 135, 1]


def test_fine_batch_of_different_lengths(tts):
    rng = np.random.default_rng(8)
    coarse = [rng.integers(0, 1024, (2, n)) for n in (1300, 40, 2100, 0)]
    voice = tts.load_voice("v2/en_speaker_1")
    batch = generate_fine(tts.fine_model, coarse, voice, FineOptions(temperature=0))
    for c, b in zip(coarse, batch):
        np.testing.assert_array_equal(b, generate_fine(tts.fine_model, [c], voice, FineOptions(temperature=0))[0])
        assert b.shape == (8, c.shape[1])


def test_sampled_batch_is_reproducible(tts):
    a = tts.generate(TEXTS[:3], seed=11, max_semantic_tokens=30)
    b = tts.generate(TEXTS[:3], seed=11, max_semantic_tokens=30)
    for x, y in zip(a, b):
        assert_same(x, y)


def test_bad_batch_arguments(tts):
    from fastbark import BadInput
    with pytest.raises(BadInput, match="one voice per text"):
        tts.generate(TEXTS, voice=["announcer"])
    with pytest.raises(BadInput, match="batch_size"):
        tts.generate(TEXTS, batch_size=0)
    with pytest.raises(BadInput, match="empty"):
        tts.generate([])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, n", [(768, 2304), (3072, 768)])  # bark-small's attention and MLP-out shapes
def test_packed_linear_rows_do_not_depend_on_the_batch(dtype, k, n):
    """At real sizes oneDNN's one-row kernel differs in the last bits from its multi-row one (the tiny
    test models do not reach it); PackedLinear must give a row the same bits alone and in a batch."""
    from fastbark.backends.cpu.linears import PackedLinear, packing_available
    if not packing_available(dtype):
        pytest.skip(f"oneDNN cannot pack {dtype} weights on this CPU (bfloat16 needs AVX-512 or AVX-NE-CONVERT)")
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n, bias=False).to(dtype)
    plain_weight = linear.weight.detach().clone()
    packed = PackedLinear(linear)
    x = torch.randn(5, 1, k, dtype=dtype)
    batch = packed(x)
    for i in range(5):
        assert torch.equal(packed(x[i: i + 1]), batch[i: i + 1])
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(batch, torch.nn.functional.linear(x, plain_weight), **tolerance)


def test_packing_falls_back_to_plain_linear(monkeypatch):
    from fastbark.backends.cpu import linears
    from fastbark.models.gpt import swap_linears

    def unavailable(*args):
        raise RuntimeError("no oneDNN kernels in this build")

    monkeypatch.setattr(linears.PackedLinear, "__init__", unavailable)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert swap_linears(model, linears.pack_linear) == 0
    assert isinstance(model[0], torch.nn.Linear)


needs_c = pytest.mark.skipif(shutil.which("cc") is None, reason="the C decode kernel needs a C compiler")


@needs_c
@pytest.mark.parametrize("k, n, bias", [(768, 2304, False), (3072, 768, False), (45, 7, True), (32, 10_048, False)])
def test_c_kernel_rows_do_not_depend_on_batch_or_threads(k, n, bias):
    """The C decode kernel: a row's bits alone = inside batches of 2, 5 and 16 (its blocks, 2x2 on AVX2
    and 4x4 on AVX-512, and its one-row path) = with another thread count; and it matches F.linear to
    float32 rounding."""
    from fastbark.backends.cpu.library import load_kernels
    from fastbark.backends.cpu.linears import GemvLinear
    assert load_kernels() is not None, "a C compiler is present, so the kernel must build"
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n, bias=bias)
    layer = GemvLinear(linear)
    x = torch.randn(16, 1, k)
    alone = [layer(x[i: i + 1]) for i in range(16)]
    for size in (2, 5, 16):
        batch = layer(x[:size])
        assert all(torch.equal(batch[i: i + 1], alone[i]) for i in range(size)), size
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(layer(x), torch.cat(alone))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(torch.cat(alone), linear(x), rtol=1e-5, atol=1e-4)
    # several positions per row take the big-product path, which agrees too
    torch.testing.assert_close(layer(x.reshape(4, 4, k)), linear(x.reshape(4, 4, k)), rtol=1e-5, atol=1e-4)


def test_c_kernel_falls_back_without_a_compiler(monkeypatch, hub_dir):
    import fastbark
    from fastbark.backends.cpu import library
    monkeypatch.setattr(library.shutil, "which", lambda name: None)
    library.clear_cache()
    try:
        with pytest.warns(UserWarning, match="no C compiler"):
            tts = fastbark.Bark.from_pretrained(hub_dir)
        assert type(tts.semantic_model.lm_head).__name__ == "PackedLinear"
        assert tts.backend.models["semantic"].linears == {"onednn": 9}
        assert tts.backend.fallbacks == ("C kernels: no C compiler (cc) found",)
    finally:
        library.clear_cache()


@needs_c
def test_building_the_kernels_leaves_the_users_rng_alone():
    from fastbark.backends.cpu import int8, library
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    library.clear_cache()
    int8.int8_kernels.cache_clear()
    assert library.load_kernels() is not None  # rebuilt from the cache folder and checked again
    assert int8.int8_kernels() is not None
    assert torch.equal(torch.rand(4), expected)
