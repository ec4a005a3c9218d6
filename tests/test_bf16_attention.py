"""The fast modes' whole-sequence attention in bfloat16 (models/bf16_attention.py, native/attention.c)."""

import shutil

import pytest
import torch

import fastbark
from fastbark.backends.cpu.attention import Bf16Attention, sdpa_whole, bf16_attention

attend = bf16_attention() if shutil.which("cc") else None
pytestmark = pytest.mark.skipif(attend is None, reason="needs a C compiler and a CPU with AVX512-BF16")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T, n_head, hd", [(1024, 12, 64), (257, 4, 64), (33, 2, 16), (1, 1, 32), (45, 2, 128)])
def test_close_to_float64_attention(T, n_head, hd, causal):
    """bfloat16 operands with float32 sums: within bfloat16's rounding of exact attention; every tail of
    its 16-key tiles, 8-query blocks and key pairs (odd T) is covered."""
    torch.manual_seed(0)
    qkv = torch.randn(2, T, 3 * n_head * hd)
    exact = sdpa_whole(qkv.double(), n_head, causal)
    got = attend(qkv, n_head, causal)
    assert got.shape == (2, T, n_head * hd) and got.dtype == torch.float32
    error = (got.double() - exact).abs()
    assert error.max() <= 0.02 * exact.abs().max() and error.mean() <= 0.004 * exact.abs().mean()
    assert error.max() > 0  # it did round to bfloat16


def test_rows_do_not_depend_on_batch_or_threads():
    torch.manual_seed(1)
    qkv = torch.randn(4, 100, 3 * 4 * 64)
    batch = attend(qkv, 4, False)
    assert all(torch.equal(attend(qkv[i: i + 1], 4, False), batch[i: i + 1]) for i in range(4))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(attend(qkv, 4, False), batch)
    finally:
        torch.set_num_threads(threads)


def test_causal_rows_see_only_their_past():
    torch.manual_seed(2)
    qkv = torch.randn(1, 40, 3 * 64)
    full = attend(qkv, 1, True)
    changed = qkv.clone()
    changed[:, 30:] += 5  # the future of rows 0-29
    assert torch.equal(attend(changed, 1, True)[:, :30], full[:, :30])


def test_unsupported_head_sizes_fall_back_to_sdpa(hub_dir):
    assert attend(torch.randn(1, 10, 3 * 2 * 8), 2, False) is None  # hd = 8: not a multiple of 16
    assert attend(torch.randn(1, 10, 3 * 1 * 160), 1, False) is None  # hd = 160: more than 128
    # "c": the kernel wherever it runs, unmeasured ("auto" runs it only where it measured faster than SDPA)
    tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int8", cpu_kernel="c")  # the test models' heads hold 16
    assert tts.fine_model.layers[0].attn.kernel._whole is attend
    assert tts.backend.models["fine"].whole_attention == "bf16-c"


def test_bfloat16_inputs():
    torch.manual_seed(3)
    qkv = torch.randn(1, 50, 3 * 2 * 32, dtype=torch.bfloat16)
    got = attend(qkv, 2, True)
    assert got.dtype == torch.bfloat16
    exact = sdpa_whole(qkv.double(), 2, True)
    assert (got.double() - exact).abs().max() <= 0.03 * exact.abs().max()


def test_only_the_fast_modes_use_it(hub_dir):
    for options, expected in ((dict(quantize="int8", cpu_kernel="c"), True),
                              (dict(dtype="bfloat16", cpu_kernel="c"), True), ({}, False), ({"cpu_kernel": "c"}, False),
                              (dict(quantize="int8", cpu_kernel="plain"), False)):
        tts = fastbark.Bark.from_pretrained(hub_dir, **options)
        for model in (tts.semantic_model, tts.coarse_model, tts.fine_model):
            uses = [isinstance(layer.attn.kernel._whole, Bf16Attention) for layer in model.layers]
            assert all(uses) if expected else not any(uses), options
