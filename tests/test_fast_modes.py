"""The fast modes (bfloat16, int8, int4) stay within stated bounds of float32 (teacher-forced, same weights)."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastbark
from fastbark.backends.cpu import int8
from fastbark.backends.cpu.int8 import Int8Linear, int8_kernels, quantize_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

# Bounds for the tiny test models; benchmarks/RESULTS.md reports the same measures at real sizes. int4 is
# much coarser (a weight's step is ~1/8 of its group's largest, against 1/127 of its row's in int8): measured
# here 0.28-0.33 and 71-77% agreement, at bark-small sizes 0.28-0.35 (RESULTS.md section 39).
MAX_REL_LOGIT_ERROR = {"int4": 0.45}
MIN_GREEDY_AGREEMENT = {"int4": 0.55}
MODES = {"bfloat16": dict(dtype="bfloat16"), "int8": dict(quantize="int8"),
         "int8+bfloat16": dict(dtype="bfloat16", quantize="int8"), "int4": dict(quantize="int4")}


@pytest.fixture(scope="module", params=list(MODES))
def fast(request, hub_dir):
    tts = fastbark.Bark.from_pretrained(hub_dir, **MODES[request.param])
    tts.mode = request.param
    return tts


def test_fidelity(tts, fast):
    from fidelity import measure
    results = measure(tts, fast, "the dog is cute", steps=48)
    for stage, r in results.items():
        assert r["max_rel_logit_error"] < MAX_REL_LOGIT_ERROR.get(fast.mode, 0.05), stage
        assert r["greedy_agreement"] >= MIN_GREEDY_AGREEMENT.get(fast.mode, 0.9), stage
        assert r["max_rel_logit_error"] > 0, "the fast mode must actually differ from float32"


def test_batch_equals_alone(fast):
    texts = ["the dog is cute", "café naïve", "Hello world"]
    greedy = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, max_semantic_tokens=40)
    batch = fast.generate(texts, **greedy)
    for text, in_batch in zip(texts, batch):
        alone = fast.generate(text, **greedy)
        np.testing.assert_array_equal(in_batch.fine_tokens, alone.fine_tokens)
        np.testing.assert_array_equal(in_batch.semantic_tokens, alone.semantic_tokens)


def test_int8_mode_quantises_every_gpt_linear(hub_dir):
    tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int8")
    for model in (tts.semantic_model, tts.coarse_model, tts.fine_model):
        linears = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
        assert linears and all(isinstance(m, Int8Linear) for m in linears)
        assert all(m.weight_q.dtype == torch.int8 for m in linears)


@pytest.mark.parametrize("k, n", [(32, 40), (768, 2304), (3072, 768)])
def test_int8_linear(k, n):
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n)
    x = torch.randn(2, 5, k)
    q = Int8Linear(linear)
    y = q(x)
    assert y.shape == (2, 5, n) and y.dtype == torch.float32
    # the integer product is exact: it equals the float64 product of the quantised operands
    x_q, x_scale = quantize_rows(x.reshape(-1, k))
    exact = (x_q.double() @ q.weight_q.double().t()) * x_scale.double() * q.weight_scale.double() + linear.bias.double()
    torch.testing.assert_close(y.reshape(-1, n).double(), exact, rtol=1e-6, atol=1e-6)
    # and it approximates the float layer (symmetric int8 on both sides: about 1% of the output's range)
    reference = linear(x)
    assert (y - reference).abs().max() < 0.02 * reference.abs().max()
    # every row gets the same bits alone as in the batch
    rows = x.reshape(-1, 1, k)
    assert all(torch.equal(q(rows[i]), y.reshape(-1, n)[i: i + 1]) for i in range(len(rows)))


def test_a_heads_rows_take_the_one_position_product(monkeypatch):
    """A head gets (B, K): its rows are single positions, for the C product at any B, not the long route (which
    turned a whole int8 head into float32 for every batched step)."""
    if int8_kernels() is None:
        pytest.skip("no C kernels on this machine")
    torch.manual_seed(0)
    layer, x = Int8Linear(torch.nn.Linear(64, 300)), torch.randn(5, 64)
    expected = torch.cat([layer(x[i: i + 1, None])[:, 0] for i in range(5)])  # (1, 1, K) rows: the decode product
    monkeypatch.setattr(int8, "int_products", lambda *a: pytest.fail("a head's rows took the long route"))
    assert torch.equal(layer(x), expected)


def test_bad_quantize(hub_dir):
    with pytest.raises(fastbark.BadInput, match="quantize 'int2' is unknown; accepted: int8, int4, or none"):
        fastbark.Bark.from_pretrained(hub_dir, quantize="int2")
    with pytest.raises(fastbark.BadInput, match="quantize int4 works with dtype float32 or bfloat16, not float16"):
        fastbark.Bark.from_pretrained(hub_dir, quantize="int4", dtype="float16")
    with pytest.raises(fastbark.BadInput, match="not float16"):
        fastbark.Bark.from_pretrained(hub_dir, quantize="int8", dtype="float16")


@pytest.mark.skipif(shutil.which("cc") is None, reason="the C decode kernels need a C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, n", [(768, 2304), (3072, 768), (45, 7)])
def test_int8_c_kernel_is_the_torch_path_bit_for_bit(k, n, dtype):
    """The C kernels must give the torch path's bits: decode steps alone or batched, and longer inputs."""
    from fastbark.backends.cpu.library import load_kernels
    assert load_kernels() is not None and load_kernels().s8 is not None
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n).to(dtype)
    native, torch_path = Int8Linear(linear), Int8Linear(linear, native=False)
    x = torch.randn(6, 1, k, dtype=dtype)
    batch = native(x)
    assert torch.equal(batch, torch_path(x))
    assert all(torch.equal(native(x[i: i + 1]), batch[i: i + 1]) for i in range(6))
    several = torch.randn(2, 5, k, dtype=dtype)  # several positions per row: C quantise / rescale around torch._int_mm
    assert torch.equal(native(several), torch_path(several))


@pytest.mark.skipif(shutil.which("cc") is None, reason="the C decode kernels need a C compiler")
def test_the_c_rounding_of_rows_divides_as_torch_does_at_every_half_way_point():
    """int8.h's quantize_row divides by the row's scale with multiply-adds (Markstein's correction), which must give
    the division's own quotient: values at, and a few ulps either side of, every half-way point k + 1/2 of the
    scale, in rows whose scales span 2^-30..2^30, round to torch's quantize_rows' integers."""
    from fastbark.backends.cpu.library import load_kernels, run_quantize
    g = torch.Generator().manual_seed(0)
    rows = []
    for exponent in range(-30, 31, 3):
        scale = (1 + torch.rand(1, generator=g).item()) * 2.0 ** exponent / 127  # the row's largest value: 127 scale
        halves = (torch.arange(-127, 127) + 0.5) * scale  # (254,) half-way points, as float32 products
        ulps = torch.arange(-3, 4, dtype=torch.int32)  # each, and 3 ulps either side
        near = (halves.float().view(torch.int32)[:, None] + ulps).view(torch.float32).reshape(-1)  # (254 * 7,)
        rows.append(torch.cat([near, torch.tensor([127 * scale])]).float())  # the largest magnitude sets the scale
    width = max(len(r) for r in rows)
    x = torch.stack([torch.cat([r, torch.zeros(width - len(r))]) for r in rows])  # (21, K): K leaves a tail
    q, scale = run_quantize(load_kernels().s8.quantize, x.contiguous(), 2)
    want_q, want_scale = quantize_rows(x)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q, want_q)


@pytest.mark.skipif(shutil.which("cc") is None, reason="the C decode kernels need a C compiler")
@pytest.mark.parametrize("make", ["int8-c", "int8-torch", "int4", "gemv"])
@torch.inference_mode()
def test_a_model_converted_after_its_layers_were_swapped_keeps_their_formats(make):
    """model.to(bfloat16) after the backend's layers are in place (OwnFormats): the C kernels read their tensors by
    address as float32 scales and weights, so those keep their dtypes (a bfloat16 scale read as float32 is read past
    its end), and each layer gives for bfloat16 inputs what it gave before the conversion."""
    from fastbark.backends.cpu.int4 import Int4Linear
    from fastbark.backends.cpu.linears import GemvLinear
    layers = {"int8-c": Int8Linear, "int8-torch": lambda linear: Int8Linear(linear, native=False),
              "int4": Int4Linear, "gemv": GemvLinear}
    torch.manual_seed(0)
    layer = torch.nn.Sequential(layers[make](torch.nn.Linear(96, 40)))
    inputs = [torch.randn(3, 1, 96).bfloat16(), torch.randn(2, 5, 96).bfloat16()]  # a decode step's rows; a prefill's
    before = [layer(x) for x in inputs]
    dtypes = {name: t.dtype for name, t in layer.state_dict().items()}
    assert layer.bfloat16() is layer and layer.to(torch.float16) is layer
    assert {name: t.dtype for name, t in layer.state_dict().items()} == dtypes
    for x, want in zip(inputs, before):
        got = layer(x)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert layer.float()(inputs[0].float()).dtype == torch.float32


@pytest.mark.parametrize("m, k, n", [(5, 45, 7), (33, 1024, 64), (17, 3072, 40), (9, 4096, 12)])
def test_int_products_via_float_are_int_mm_exactly(m, k, n):
    """The AVX2 path's float32 GEMMs over K slices give torch._int_mm's int32 bits, even for the largest
    sums (every x 127, every w 126 or 127), where one float32 product over all of K would round."""
    from fastbark.backends.cpu.int8 import (EXACT_FLOAT_K, float_products, float_products_exact, int_mm_via_float,
                                            int_products)
    torch.manual_seed(k)
    x = torch.full((m, k), 127, dtype=torch.int8)
    x[1:] = torch.randint(-127, 128, (m - 1, k), dtype=torch.int8)
    w = torch.randint(126, 128, (n, k), dtype=torch.int8)
    w[1:] *= torch.where(torch.rand(n - 1, k) < 0.5, -1, 1).to(torch.int8)
    exact = torch._int_mm(x, w.t())
    assert torch.equal(int_mm_via_float(x, w), exact)
    # the C route's: x as float32 integers in, float32 sums out where K allows one exact GEMM, else int32
    products = float_products(x.float(), w)
    assert products.dtype == (torch.float32 if k <= EXACT_FLOAT_K else torch.int32)
    assert torch.equal(products.to(torch.int32), exact)
    if k > 1040:  # the slices matter: a single float32 product is not exact here
        assert not torch.equal((x.float() @ w.float().t()).to(torch.int32), exact)
    previous = torch.get_float32_matmul_precision()
    try:  # a user who allows reduced-precision float products gets torch._int_mm instead
        torch.set_float32_matmul_precision("medium")
        assert not float_products_exact()
        assert torch.equal(int_products(x, w, via_float=True), exact)
    finally:
        torch.set_float32_matmul_precision(previous)
