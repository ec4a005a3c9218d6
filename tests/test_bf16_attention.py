"""The fast modes' whole-sequence attention in bfloat16 (backends/cpu/attention.py, native/attention.c): the
AVX512-BF16 kernel ("bf16-c") and the AMX tiles' ("amx"), each where this CPU runs it."""

import shutil

import pytest
import torch

import fastbark
from fastbark.backends.cpu.attention import Bf16Attention, amx_attention, bf16_attention, sdpa_whole

attend = bf16_attention() if shutil.which("cc") else None
tiles = amx_attention() if shutil.which("cc") else None
needs_bf16 = pytest.mark.skipif(attend is None, reason="needs a C compiler and a CPU with AVX512-BF16")
KERNELS = [pytest.param(attend, id="bf16-c", marks=needs_bf16),
           pytest.param(tiles, id="amx", marks=pytest.mark.skipif(tiles is None, reason="needs AMX tiles"))]
# (T, heads, head size): tails of the 16-key tiles, 8- and 32-query blocks, key pairs (odd T); sizes both kernels run
SHAPES = [(1024, 12, 64), (887, 12, 64), (257, 4, 64), (33, 2, 32), (1, 1, 32), (45, 2, 128), (70, 3, 96)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T, n_head, hd", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_close_to_float64_attention(kernel, T, n_head, hd, causal, dtype):
    """bfloat16 operands with float32 sums: within bfloat16's rounding of exact attention, in the dtype of q, k, v."""
    torch.manual_seed(0)
    qkv = torch.randn(2, T, 3 * n_head * hd).to(dtype)
    exact = sdpa_whole(qkv.double(), n_head, causal)
    got = kernel(qkv, n_head, causal)
    assert got.shape == (2, T, n_head * hd) and got.dtype == dtype
    error = (got.double() - exact).abs()
    assert error.max() <= 0.02 * exact.abs().max() and error.mean() <= 0.004 * exact.abs().mean()
    assert error.max() > 0 or dtype == torch.bfloat16  # float32 q, k, v: it did round them to bfloat16


@needs_bf16
def test_head_size_16_on_avx512_bf16():
    torch.manual_seed(0)
    qkv = torch.randn(2, 33, 3 * 2 * 16)
    exact = sdpa_whole(qkv.double(), 2, True)
    assert (attend(qkv, 2, True).double() - exact).abs().max() <= 0.02 * exact.abs().max()


@pytest.mark.parametrize("kernel", KERNELS)
def test_rows_do_not_depend_on_batch_or_threads(kernel):
    torch.manual_seed(1)
    qkv = torch.randn(4, 100, 3 * 4 * 64)
    for causal in (False, True):
        batch = kernel(qkv, 4, causal)
        assert all(torch.equal(kernel(qkv[i: i + 1], 4, causal), batch[i: i + 1]) for i in range(4))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1 if threads > 1 else 2)
            assert torch.equal(kernel(qkv, 4, causal), batch)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.parametrize("kernel", KERNELS)
def test_causal_rows_see_only_their_past(kernel):
    torch.manual_seed(2)
    qkv = torch.randn(1, 40, 3 * 64)
    full = kernel(qkv, 1, True)
    changed = qkv.clone()
    changed[:, 30:] += 5  # the future of rows 0-29
    assert torch.equal(kernel(changed, 1, True)[:, :30], full[:, :30])


@pytest.mark.skipif(tiles is None, reason="needs AMX tiles")
def test_the_tiles_kernel_refuses_what_it_cannot_run():
    assert tiles(torch.randn(1, 10, 3 * 2 * 16), 2, False) is None  # hd = 16: not a multiple of a tile's 32
    assert tiles(torch.randn(1, 10, 3 * 1 * 160), 1, False) is None  # hd = 160: more than 128
    assert tiles(torch.randn(1, 10, 3 * 64).half(), 1, False) is None  # float16: neither float32 nor bfloat16
    assert not tiles.runs(2, 32) and tiles.runs(12, 768) and Bf16Attention.runs(2, 32)


@needs_bf16
def test_unsupported_head_sizes_fall_back_to_sdpa(hub_dir):
    assert attend(torch.randn(1, 10, 3 * 2 * 8), 2, False) is None  # hd = 8: not a multiple of 16
    assert attend(torch.randn(1, 10, 3 * 1 * 160), 1, False) is None  # hd = 160: more than 128
    # "c": a C kernel wherever one runs, unmeasured ("auto" runs it only where it measured faster than SDPA); the
    # test models' heads hold 16, which only the AVX512-BF16 kernel runs
    tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int8", cpu_kernel="c")
    assert tts.fine_model.layers[0].attn.kernel._whole is attend
    assert tts.backend.models["fine"].whole_attention == "bf16-c"


@needs_bf16
def test_bfloat16_inputs():
    torch.manual_seed(3)
    qkv = torch.randn(1, 50, 3 * 2 * 32, dtype=torch.bfloat16)
    got = attend(qkv, 2, True)
    assert got.dtype == torch.bfloat16
    exact = sdpa_whole(qkv.double(), 2, True)
    assert (got.double() - exact).abs().max() <= 0.03 * exact.abs().max()


@needs_bf16
def test_only_the_fast_modes_use_it(hub_dir):
    for options, expected in ((dict(quantize="int8", cpu_kernel="c"), True),
                              (dict(dtype="bfloat16", cpu_kernel="c"), True), ({}, False), ({"cpu_kernel": "c"}, False),
                              (dict(quantize="int8", cpu_kernel="plain"), False)):
        tts = fastbark.Bark.from_pretrained(hub_dir, **options)
        for model in (tts.semantic_model, tts.coarse_model, tts.fine_model):
            uses = [isinstance(layer.attn.kernel._whole, Bf16Attention) for layer in model.layers]
            assert all(uses) if expected else not any(uses), options
