"""The AMX tiles' long products (backends/cpu/amx.py, native/amx.c): the weight layout everywhere (checked against the
tile instructions' definition, computed in torch); the products themselves where this CPU has AMX."""

import threading

import pytest
import torch
from torch import nn

from fastbark.backends.cpu import amx as tiles
from fastbark.backends.cpu import int8
from fastbark.backends.cpu.int4 import Int4Linear, dequantize_groups, quantize_groups
from fastbark.backends.cpu.int8 import Int8Linear, int_routes
from fastbark.backends.cpu.library import load_kernels

needs_kernels = pytest.mark.skipif(load_kernels() is None, reason="fastbark's C kernels are not built here")
needs_amx = pytest.mark.skipif(tiles.amx_kernels() is None, reason="no AMX tiles on this CPU or build")
# (M, K, N): tails of a 32-row block, of a tile's K (64 int8, 32 bfloat16), of a 32-output pair; several blocks
SHAPES = [(1, 7, 45), (5, 96, 10), (33, 130, 9), (40, 200, 70), (64, 128, 64), (70, 1100, 33)]


def tile_product(packed: torch.Tensor, x: torch.Tensor, n_out: int, group: int) -> torch.Tensor:
    """x (M, K) @ w^T from w's packed tiles as TDPBSSD / TDPBF16PS read them: tile (nb, kt) row r holds, for each of 16
    outputs n, w[nb * 16 + n, kt * 16 * group + r * group + j] for j < group; zeros pad N and K. In float64."""
    m, k = x.shape
    depth = 16 * group  # values of K in a tile row
    kt = -(-k // depth)
    w = packed.reshape(-1, kt, 16, 16, group)  # (N/16 blocks, K tiles, r, n, j)
    w = w.permute(0, 3, 1, 2, 4).reshape(-1, kt * depth)  # -> (N padded, K padded): output nb*16+n, K kt*depth+r*group+j
    x = torch.nn.functional.pad(x.double(), (0, kt * depth - k))
    return (x @ w.double().T)[:, :n_out]


@needs_kernels
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_packed_weights_hold_what_the_tile_instructions_read(m, k, n):
    amx = load_kernels().amx
    g = torch.Generator().manual_seed(k)
    x = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    packed = tiles.pack(amx, w)
    assert packed.numel() == -(-n // 32) * 32 * -(-k // 64) * 64  # whole pairs of tiles along N, whole tiles along K
    assert torch.equal(tile_product(packed.view(torch.int8), x.float(), n, 4), x.double() @ w.double().T)
    xb, wb = torch.randn(m, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    packed = tiles.pack(amx, wb).view(torch.bfloat16)
    assert torch.allclose(tile_product(packed, xb.float(), n, 2), xb.double() @ wb.double().T, rtol=1e-12, atol=1e-9)


@needs_amx
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_int8_on_tiles_gives_the_torch_paths_bits(m, k, n):
    amx = tiles.amx_kernels()
    g = torch.Generator().manual_seed(m * n)
    linear = nn.Linear(k, n, bias=n % 2 == 0)
    x = torch.randn(2, m, k, generator=g) * 3
    on_tiles, reference = Int8Linear(linear, route="amx"), Int8Linear(linear, native=False, route="int_mm")
    assert on_tiles.kind == "int8-amx"
    assert torch.equal(on_tiles(x), reference(x))  # quantised, multiplied and rescaled in one call: the same bits
    x_q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    sums = tiles.int8_sums(amx, x_q, tiles.pack(amx, reference.weight_q), n)
    assert torch.equal(sums, x_q.int() @ reference.weight_q.int().T)  # exact int32 sums, as torch._int_mm's


@needs_amx
def test_bits_do_not_depend_on_the_batch_or_the_threads():
    """Each output sums its K in one fixed order (tile by tile), whatever rows come with it and however the blocks
    are split over the threads."""
    g = torch.Generator().manual_seed(0)
    linear, linear16 = nn.Linear(256, 96), nn.Linear(256, 96).to(torch.bfloat16)
    for plain in (False, True):  # packed weights (the fine GPT's), plain ones (the prefills')
        layer8 = Int8Linear(linear, route="amx-plain" if plain else "amx")
        half = tiles.AmxBf16Linear(linear16, plain=plain)
        x = torch.randn(70, 256, generator=g)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            whole8, whole16 = layer8(x), half(x.bfloat16())
            torch.set_num_threads(1)
            assert torch.equal(layer8(x), whole8) and torch.equal(half(x.bfloat16()), whole16)
        finally:
            torch.set_num_threads(before)
        for rows in (slice(0, 2), slice(33, 70), slice(5, 6)):  # alone (two rows: a lone one goes to the decode path)
            assert torch.equal(layer8(x[rows]), whole8[rows])
            assert torch.equal(half(x[rows].bfloat16()), whole16[rows])


@needs_amx
def test_bfloat16_on_tiles_is_a_bfloat16_product():
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(768, 300).to(torch.bfloat16)
    layer = tiles.AmxBf16Linear(linear)
    x = torch.randn(3, 50, 768, generator=g).bfloat16()
    y = layer(x)
    want = x.float() @ linear.weight.float().T + linear.bias.float()  # float32 sums of exact products
    assert y.dtype == torch.bfloat16 and y.shape == (3, 50, 300)
    assert (y.float() - want).abs().max() <= 2 ** -7 * want.abs().max()  # one rounding to bfloat16, sums reordered
    one = x[:, :1]  # one position per row: the decode path (F.linear), not the tiles
    assert torch.equal(layer(one), torch.nn.functional.linear(one, linear.weight, linear.bias))


@needs_amx
def test_scratch_memory_is_reused_safely_across_shapes_and_threads():
    """x's tiles live in a per-thread buffer kept between calls: a smaller product after a larger one must not read
    the larger one's leftovers as padding, and threads calling at once must not share it."""
    g = torch.Generator().manual_seed(2)
    layers, want = {}, {}
    for m, k, n in [(96, 512, 64), (33, 130, 40), (64, 128, 64), (7, 70, 33)]:
        linear, x = nn.Linear(k, n), torch.randn(m, k, generator=g)
        layers[m, k, n] = (Int8Linear(linear, route="amx"), x)
        want[m, k, n] = Int8Linear(linear, native=False, route="int_mm")(x)
    for _ in range(2):  # large, then smaller ones with tails: the padding is zero again every time
        for s, (layer, x) in layers.items():
            assert torch.equal(layer(x), want[s])
    errors = []

    def run(shape):
        layer, x = layers[shape]
        for _ in range(20):
            if not torch.equal(layer(x), want[shape]):
                errors.append(shape)
    threads = [threading.Thread(target=run, args=(s,)) for s in layers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_the_tiles_route_is_offered_only_where_it_runs(monkeypatch):
    assert ("amx" in int_routes(amx=True)) == (int8.amx_int8() is not None)
    assert ("amx-plain" in int_routes(amx=True, plain=True)) == (int8.amx_int8() is not None)
    assert "amx" not in int_routes(amx=True, plain=True)  # the decode stages: no packed copy
    assert not {"amx", "amx-plain"} & set(int_routes(amx=False))
    monkeypatch.setattr(int8, "amx_int8", lambda: None)
    assert not {"amx", "amx-plain"} & (set(int_routes(amx=True)) | set(int_routes(amx=True, plain=True)))
    for route in ("amx", "amx-plain"):
        with pytest.raises(ValueError, match="AMX"):
            Int8Linear(nn.Linear(64, 32), route=route)


# (M, K, N) the plain weights' kernels take: N a multiple of 32, K of 64; rows ending inside a tile and a block
PLAIN = [(5, 64, 32), (40, 128, 64), (70, 192, 96), (887, 768, 256)]


@needs_amx
@pytest.mark.parametrize("m, k, n", PLAIN)
def test_plain_int8_weights_on_tiles_give_the_torch_paths_bits(m, k, n):
    """The decode stages' prefills: w's rows as the tiles' A operand, x packed as B, y^T transposed back: the same
    bits as the torch path and the packed route (GELU's too), no packed copy kept, a row's bits whatever its batch."""
    g = torch.Generator().manual_seed(m + n)
    linear = nn.Linear(k, n, bias=n % 64 == 0)
    x = torch.randn(2, m, k, generator=g) * 3
    plain, packed = Int8Linear(linear, route="amx-plain"), Int8Linear(linear, route="amx")
    assert plain.kind == "int8-amx" and not hasattr(plain, "weight_tiles")
    assert torch.equal(plain(x), Int8Linear(linear, native=False)(x))
    assert torch.equal(plain.forward_gelu(x), packed.forward_gelu(x))
    whole = plain(x[1])
    for rows in (slice(0, 2), slice(m // 2, m), slice(m - 2, m)):
        assert torch.equal(plain(x[1, rows]), whole[rows])
    sums = tiles.int8_sums(tiles.amx_kernels(), x[0].clamp(-127, 127).to(torch.int8), plain.weight_q, n, plain=True)
    assert torch.equal(sums, x[0].clamp(-127, 127).to(torch.int8).int() @ plain.weight_q.int().T)


@needs_amx
@pytest.mark.parametrize("m, k, n", PLAIN)
def test_plain_bfloat16_weights_on_tiles_are_a_bfloat16_product(m, k, n):
    g = torch.Generator().manual_seed(m)
    linear = nn.Linear(k, n).to(torch.bfloat16)
    layer = tiles.AmxBf16Linear(linear, plain=True)
    assert layer.weight_tiles is None and layer.weight is linear.weight  # only the plain weight, shared
    x = torch.randn(1, m, k, generator=g).bfloat16()
    y = layer(x)
    want = x.float() @ linear.weight.float().T + linear.bias.float()
    assert y.dtype == torch.bfloat16 and (y.float() - want).abs().max() <= 2 ** -7 * want.abs().max()
    for rows in (slice(0, 2), slice(m // 2, m)):  # a row's bits whatever its batch
        assert torch.equal(layer(x[:, rows]), y[:, rows])
    gelu = layer.forward_gelu(x)
    assert (gelu.float() - torch.nn.functional.gelu(want)).abs().max() <= 2 ** -7 * want.abs().max()


@needs_amx
def test_plain_weights_of_other_shapes_are_refused():
    amx = tiles.amx_kernels()
    with pytest.raises(ValueError, match="multiple of 32"):
        Int8Linear(nn.Linear(96, 64), route="amx-plain")  # K = 96: not whole tiles of 64 int8
    with pytest.raises(ValueError, match="multiple of 32"):
        tiles.AmxBf16Linear(nn.Linear(64, 48).bfloat16(), plain=True)  # N = 48: not whole pairs of 16
    x = torch.randint(-127, 128, (4, 96), dtype=torch.int8)
    with pytest.raises(RuntimeError, match="plain weights"):  # the C entry point refuses them too
        tiles.int8_sums(amx, x, torch.zeros(64, 96, dtype=torch.int8), 64, plain=True)


@needs_amx
def test_a_quantised_prefill_on_plain_tiles_keeps_its_logits_and_rows():
    """A causal GPT's int8 prefill with its products on the tiles over plain weights: the logits of int8's torch._int_mm
    route bit for bit, and a text's logits alone equal to its logits in a batch."""
    from fastbark.models.gpt import CausalGPT, GPTConfig
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, input_vocab_size=50, output_vocab_size=64, block_size=64,
                       bias=True)
    models = {}
    for route in ("int_mm", "amx-plain"):
        torch.manual_seed(0)
        model = CausalGPT(config).eval()
        model.swap_linears(lambda linear, route=route: Int8Linear(linear, route=route))
        models[route] = model
    embeds = torch.randn(3, 37, 64)
    with torch.inference_mode():
        want = models["int_mm"].prefill(embeds, models["int_mm"].new_cache(3))
        got = models["amx-plain"].prefill(embeds, models["amx-plain"].new_cache(3))
        alone = models["amx-plain"].prefill(embeds[1:2], models["amx-plain"].new_cache(1))
    assert torch.equal(got, want) and torch.equal(alone, got[1:2])


@needs_kernels
@pytest.mark.parametrize("k, n", [(64, 32), (96, 45), (200, 70), (768, 33)])
def test_int4_weights_expand_into_the_tiles_their_bfloat16_route_multiplies(k, n):
    """An int4 weight (int4.py's groups) expanded straight into tiles holds, in fastbark_amx_pack's layout, each q * d
    rounded once to bfloat16: the values the int4 mode's bfloat16 route multiplies. On every machine."""
    amx = load_kernels().amx
    g = torch.Generator().manual_seed(k + n)
    packed, scale = quantize_groups(torch.randn(n, k, generator=g))
    want = tiles.pack(amx, dequantize_groups(packed, scale, k).to(torch.bfloat16))
    assert torch.equal(tiles.q4_tiles(amx, packed, scale, k), want)


@needs_amx
def test_int4_on_tiles_gives_the_bfloat16_routes_values():
    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(200, 70)
    on_tiles = Int4Linear(linear, one_text=True, route="amx")
    reference = Int4Linear(linear, one_text=True, route="bfloat16")
    x = torch.randn(1, 45, 200, generator=g)
    want = reference(x)
    assert (on_tiles(x) - want).abs().max() <= 2 ** -7 * want.abs().max()  # sums in another order, rounded once


def test_the_int4_tiles_route_is_refused_where_it_cannot_run(monkeypatch):
    from fastbark.backends.cpu.int4 import int4_routes
    assert ("amx" in int4_routes(amx=True)) == (tiles.amx_kernels() is not None)
    assert set(int4_routes(amx=True, one_text=False)) == ({"float32", "amx"} if tiles.amx_kernels() is not None else {
        "float32"})  # prefills: oneDNN or the tiles, whose rows do not depend on their batch
    monkeypatch.setattr(tiles, "amx_kernels", lambda: None)
    assert "amx" not in int4_routes(amx=True) and "amx" not in int4_routes(amx=True, one_text=False)
    for one_text in (True, False):
        with pytest.raises(ValueError, match="AMX"):
            Int4Linear(nn.Linear(64, 32), one_text=one_text, route="amx")
    assert Int4Linear(nn.Linear(64, 32), route="bfloat16").long_route == "float32"  # prefills never take torch's
