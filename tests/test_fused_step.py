"""The CUDA backend's fused Triton decode step (backends/cuda/fused.py), every line of it on the CPU through
Triton's interpreter: the same logits and cache writes as the torch step it replaces (float32 closely,
float16 within half precision's rounding), a row's bits whatever its companions and however many rows
run, the greedy tokens of the plain backend through the pipeline, and the candidates a GPU would time.
Its speed is measured by benchmarks/gpu.py on a GPU. conftest.py turns the interpreter on (TRITON_INTERPRET=1)
before anything imports Triton."""

import numpy as np
import pytest
import torch

from fastbark.backends.cuda import fused
from fastbark.backends.cuda.decoder import StaticDecoder, step_candidates, token_step
from fastbark.models.gpt import CausalGPT, GPTConfig
from fastbark.options import SemanticOptions
from fastbark.pipeline.semantic import generate_semantic

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter's tests are the CPU's")


def tiny_model(bias: bool, dtype: torch.dtype, n_head: int = 2, n_embd: int = 64) -> CausalGPT:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=n_head, n_embd=n_embd, input_vocab_size=50, output_vocab_size=40,
                       block_size=256, bias=bias)
    model = CausalGPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the default init, so that every term matters
            p.normal_(0, 0.3)
    return model.to(dtype)


def random_cache(model: CausalGPT, rows: int) -> torch.Tensor:
    c = model.config
    generator = torch.Generator().manual_seed(1)
    shape = (c.n_layer, 2, rows, c.n_head, c.block_size, c.n_embd // c.n_head)
    return torch.randn(shape, generator=generator).to(model.lm_head.weight.dtype)


@pytest.mark.parametrize("shape", [(2, 64), (6, 96)], ids=["C64-hd32", "C96-hd16"])  # 96: C not a power of two
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pos, tiles", [(0, fused.Tiles()), (70, fused.Tiles()),
                                        (200, fused.Tiles(n=16, k=16, keys=32)),
                                        (128, fused.Tiles(n=16, k=16, keys=32, split=2))])
def test_logits_and_cache_writes_match_the_torch_step(shape, dtype, tolerance, bias, pos, tiles):
    """pos 0 attends to the new key only; 70 and 200 end inside a chunk of keys, so the keys after pos, which
    hold random numbers, must not count; 128 starts a chunk. Small `k` tiles split every product's inputs
    4 or 2 ways. A width of 96 (as bark-small's 768) leaves part of every block of columns empty."""
    model = tiny_model(bias, dtype, *shape)
    kv_fused, kv_torch = random_cache(model, 3), random_cache(model, 3)
    token, position = torch.tensor([1, 7, 30]), torch.tensor([pos])
    with torch.inference_mode():
        got = fused.token_step(model, token, position, kv_fused, tiles)
        want = token_step(model, token, position, kv_torch, 256)
    assert got.dtype == want.dtype and got.shape == want.shape == (3, 40)
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(kv_fused.float(), kv_torch.float(), rtol=tolerance, atol=tolerance)
    written = kv_fused[:, :, :, :, pos]
    assert not torch.equal(written, random_cache(model, 3)[:, :, :, :, pos])  # the new keys and values landed
    kv_fused[:, :, :, :, pos] = random_cache(model, 3)[:, :, :, :, pos]
    assert torch.equal(kv_fused, random_cache(model, 3))  # and nothing else was written


@pytest.mark.parametrize("tiles, shape", [(fused.Tiles(), (2, 128)), (fused.Tiles(n=16, k=32, keys=32), (2, 64))])
def test_a_rows_bits_do_not_depend_on_its_companions_or_the_row_count(tiles, shape):
    """Row 1 of a batch of 3 against the same row alone (a slab of one row), in float16, with other numbers in
    the other rows of the cache: bit for bit, logits and cache (heads of 64, as Bark's, and of 32)."""
    model = tiny_model(True, torch.float16, *shape)
    kv = random_cache(model, 3)
    alone = kv[:, :, 1:2].clone()  # (n_layer, 2, 1, H, max_len, hd)
    kv[:, :, 0].normal_()
    token, position = torch.tensor([1, 7, 30]), torch.tensor([100])
    with torch.inference_mode():
        batch = fused.token_step(model, token, position, kv, tiles)
        one = fused.token_step(model, token[1:2], position, alone, tiles)
    assert torch.equal(batch[1], one[0])
    assert torch.equal(kv[:, :, 1], alone[:, :, 0])


def test_greedy_semantic_tokens_equal_the_plain_decoders(hub_dir):
    """Through the pipeline: a StaticDecoder on the fused step gives the tokens of the plain backend's decode,
    float32, for two texts; a slab made for 3 rows (4, a power of two) runs 2 rows for 2 texts."""
    import fastbark
    tts = fastbark.Bark.from_pretrained(hub_dir, backend="torch")
    model = tts.semantic_model
    ids = [tts.tokenize(t) for t in ("the dog is cute", "Hello world")]
    options = SemanticOptions(temperature=0, max_tokens=6, allow_early_stop=False)
    want = generate_semantic(model, ids, None, options)
    decoder = StaticDecoder(model, graphs=False, rows=4, tiles=fused.Tiles(n=256, k=32))  # few programs: quick
    model.use_kernels(model.layers[0].attn.kernel, None, decoder)
    try:
        got = generate_semantic(model, ids, None, options)
        cache = decoder.new_cache(3, 1024)
        assert decoder.runner(cache.slab, 2, 10)[0] == (2, 1024)  # two rows run of the slab's four
        assert decoder.runner(cache.slab, 3, 10)[0] == (4, 1024)
        assert decoder.kind == "static+triton"
    finally:
        model.use_kernels(model.layers[0].attn.kernel)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_the_candidates_a_gpu_times():
    names, why = step_candidates(tiny_model(True, torch.float32))
    assert "sdpa" in names and not any(n.startswith("triton") for n in names)
    assert why == "fused Triton step: half precision only"
    names, why = step_candidates(tiny_model(True, torch.float16))
    assert why is None and [n for n in names if n.startswith("triton")] == [t.name for t in fused.TILES]
    names, why = step_candidates(tiny_model(True, torch.float16, n_head=4, n_embd=72))
    assert why == "fused Triton step: head size 18 is not a power of two of at least 16"
    swapped = tiny_model(True, torch.float16)
    swapped.layers[0].mlp.in_proj = torch.nn.Sequential(swapped.layers[0].mlp.in_proj)
    assert fused.supports(swapped) == "its linear layers are not plain contiguous nn.Linear"


def test_a_fused_steps_caches_hold_only_the_batchs_rows():
    """The torch step pads a slab to 16 rows (one GEMM shape for every batch); the fused step's rows are
    independent, so its slab holds the batch rounded up to a power of two."""
    model = tiny_model(True, torch.float16)
    fused_decoder = StaticDecoder(model, graphs=False, tiles=fused.Tiles())
    torch_decoder = StaticDecoder(model, graphs=False)
    assert [fused_decoder.rows_for(b) for b in (1, 3, 16, 17)] == [1, 4, 16, 32]
    assert [torch_decoder.rows_for(b) for b in (1, 3, 16, 17)] == [16, 16, 16, 32]
    assert fused_decoder.new_cache(1, 256).slab.kv.shape[2] == 1


def test_offload_takes_the_fused_step_only_where_it_runs():
    """With offload no step can be timed (the models are in CPU memory): the fused step is taken where its
    captured check passes; here (no CUDA) it cannot be captured, and the reason is given."""
    from fastbark import EngineOptions
    from fastbark.backends.cuda import CudaBackend
    backend = CudaBackend(EngineOptions(dtype="float16"), graphs=False)
    keywords, why = backend.offload_step(tiny_model(True, torch.float32))
    assert keywords == {} and why == "fused Triton step: half precision only"
    keywords, why = backend.offload_step(tiny_model(True, torch.float16))
    assert keywords == {} and why.startswith("fused Triton step: ")


def test_a_step_choice_measured_before_is_not_measured_again(tmp_path):
    """Timing every candidate takes seconds at each engine's making on a GPU: the choice is kept per GPU and
    software (`ChoiceCache`), and read back, with the times it was made from, without timing anything (here,
    on a CPU, where timing cannot run at all). A kept choice that is no longer a candidate is measured again."""
    from fastbark.backends.cpu.choice import STEP_LABEL, Choice, ChoiceCache
    from fastbark.backends.cuda.decoder import choose_step
    model = tiny_model(True, torch.float16)
    cache = ChoiceCache(tmp_path, ["a GPU"])
    key = "decode step 2x64x40 torch.float16"
    tiles = fused.TILES[1]
    cache.put(key, Choice((2, 64, 40), tiles.name, {tiles.name: 0.25, "sdpa": 0.5}, {}, STEP_LABEL))
    name, keywords, report = choose_step(model, ChoiceCache(tmp_path, ["a GPU"]))  # read from the file
    assert (name, keywords) == (tiles.name, {"tiles": tiles})
    assert report == f"measured earlier on this GPU, ms at 1 + 16 rows: {tiles.name} 0.250 ms, sdpa 0.500 ms"
    cache.put(key, Choice((2, 64, 40), "triton-gone", {"triton-gone": 0.1}, {}, STEP_LABEL))
    name, keywords, report = choose_step(model, cache)
    assert name == "sdpa" and report.startswith("none could be timed")  # measured again: no GPU here
    assert cache.get(key).chosen == "triton-gone"  # and nothing measured, nothing kept


@pytest.mark.parametrize("tiles", fused.TILES, ids=lambda t: t.name)
def test_every_candidate_a_gpu_may_choose_gives_the_torch_steps_logits(tiles):
    """Each of the tiles `choose_step` times, on a width that is not a power of two, at a position inside a
    chunk of keys, in float16."""
    model = tiny_model(False, torch.float16, 6, 96)
    kv_fused, kv_torch = random_cache(model, 2), random_cache(model, 2)
    token, position = torch.tensor([3, 9]), torch.tensor([150])
    with torch.inference_mode():
        got = fused.token_step(model, token, position, kv_fused, tiles)
        want = token_step(model, token, position, kv_torch, 256)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(kv_fused.float(), kv_torch.float(), rtol=2e-2, atol=2e-2)
