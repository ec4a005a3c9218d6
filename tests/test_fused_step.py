"""The CUDA backend's fused Triton decode step (backends/cuda/fused.py), every line of it on the CPU through
Triton's interpreter: the same logits and cache writes as the torch step it replaces (float32 closely,
float16 within half precision's rounding), a row's bits whatever its companions and however many rows
run, the greedy tokens of the plain backend through the pipeline, and the candidates a GPU would time.
Its speed is measured by benchmarks/gpu.py on a GPU."""

import os

import torch

if not torch.cuda.is_available():  # Triton's interpreter runs the kernels on CPU tensors; read at decoration
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fastbark.backends.cuda import fused  # noqa: E402
from fastbark.backends.cuda.decoder import StaticDecoder, step_candidates, token_step  # noqa: E402
from fastbark.models.gpt import CausalGPT, GPTConfig  # noqa: E402
from fastbark.options import SemanticOptions  # noqa: E402
from fastbark.pipeline.semantic import generate_semantic  # noqa: E402

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


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pos", [0, 70, 200])
def test_logits_and_cache_writes_match_the_torch_step(dtype, tolerance, bias, pos):
    """pos 0 attends to the new key only; 70 and 200 end inside a block of keys (64 a block), so the masked
    keys after pos, which hold random numbers, must not count."""
    model = tiny_model(bias, dtype)
    kv_fused, kv_torch = random_cache(model, 3), random_cache(model, 3)
    token, position = torch.tensor([1, 7, 30]), torch.tensor([pos])
    with torch.inference_mode():
        got = fused.token_step(model, token, position, kv_fused, fused.Tiles())
        want = token_step(model, token, position, kv_torch, 256)
    assert got.dtype == want.dtype and got.shape == want.shape == (3, 40)
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(kv_fused.float(), kv_torch.float(), rtol=tolerance, atol=tolerance)
    written = kv_fused[:, :, :, :, pos]
    assert not torch.equal(written, random_cache(model, 3)[:, :, :, :, pos])  # the new keys and values landed
    kv_fused[:, :, :, :, pos] = random_cache(model, 3)[:, :, :, :, pos]
    assert torch.equal(kv_fused, random_cache(model, 3))  # and nothing else was written


@pytest.mark.parametrize("tiles", [fused.Tiles(), fused.Tiles(n=16, k=32, keys=32)])
def test_a_rows_bits_do_not_depend_on_its_companions_or_the_row_count(tiles):
    """Row 1 of a batch of 3 against the same row alone (a slab of one row), in float16, with other numbers in
    the other rows of the cache: bit for bit, logits and cache."""
    model = tiny_model(True, torch.float16)
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
    """Through the pipeline: a StaticDecoder on the fused step, rows 2 of a slab of 4 (run as 2, a power of
    two), gives the tokens of the plain backend's decode, float32."""
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
        cache = decoder.new_cache(2, 1024)
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
