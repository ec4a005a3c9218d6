"""The int4 mode (backends/cpu/int4.py, native/int4.h): 4-bit weights in groups of 32 with their own scale
(ggml's q4_0 levels), int8 activation rows; the C product, the float32 route, and the engine."""

import time

import pytest
import torch
from torch import nn

import fastbark
from fastbark.backends.cpu.int4 import GROUP, Int4Linear, dequantize_groups, int4_kernel, quantize_groups
from fastbark.backends.cpu.int8 import Int8Linear


@pytest.mark.parametrize("k", [32, 45, 64, 200, 768])
def test_groups_round_trip(k):
    torch.manual_seed(0)
    w = torch.randn(6, k)
    packed, scale = quantize_groups(w)
    assert packed.dtype == torch.uint8 and packed.shape == (6, (k + 63) // 64 * 32)
    assert scale.shape == (6, (k + GROUP - 1) // GROUP)
    back = dequantize_groups(packed, scale, k)
    step = scale.abs().repeat_interleave(GROUP, dim=1)[:, :k]  # each weight's group step |d|
    err = (back - w).abs()
    assert bool((err <= step + 1e-6).all())  # half a step; a whole one where clamped at 7
    assert (err <= step * 0.5 + 1e-6).float().mean() > 0.95
    for g in range(scale.shape[1]):  # each group's largest magnitude is kept exactly (it maps to -8)
        cols = slice(g * GROUP, min(k, (g + 1) * GROUP))
        i = w[:, cols].abs().argmax(1)
        torch.testing.assert_close(back[:, cols].gather(1, i[:, None]), w[:, cols].gather(1, i[:, None]), rtol=0, atol=0)


def test_nibble_layout():
    """Byte j of a 64-weight block: weight j in the low nibble, weight 32 + j in the high one, each as q + 8."""
    q = torch.arange(64) % 16 - 8  # every level, -8 first in each group
    packed, scale = quantize_groups(q[None].float() * 0.5)
    assert torch.equal(scale, torch.full((1, 2), 0.5 * -8 / -8))
    assert torch.equal(packed[0] & 15, (q[:32] + 8).to(torch.uint8))
    assert torch.equal(packed[0] >> 4, (q[32:] + 8).to(torch.uint8))


@pytest.mark.parametrize("k", [45, 200, 768])
@torch.inference_mode()
def test_c_product_matches_the_float_route_and_keeps_each_rows_bits(k):
    if int4_kernel() is None:
        pytest.skip("no C kernels on this machine")
    torch.manual_seed(0)
    linear = nn.Linear(k, 40)
    c, route = Int4Linear(linear), Int4Linear(linear, native=False)
    assert c.kind == "int4-c" and route.kind == "int4-torch"
    x = torch.randn(5, 1, k)
    got, want = c(x), route(x)  # decode rows: C; the route: q * d in float32, oneDNN
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5
    # both approximate the float layer as 4-bit weights can (random weights: ~5-8% of the output's range)
    assert (got - linear(x)).abs().max() < 0.15 * linear(x).abs().max()
    for layer, y in ((c, got), (route, want)):  # every row alone as in the batch, in the decode and the long shape
        assert all(torch.equal(layer(x[i: i + 1]), y[i: i + 1]) for i in range(5))
        long = layer(x.reshape(1, 5, k))  # several positions of one row: the long route for both
        assert all(torch.equal(layer(x.reshape(1, 5, k)[:, i: i + 2]), long[:, i: i + 2]) for i in range(4))
    one_text = Int4Linear(linear, one_text=True)(x.reshape(1, 5, k))  # the fine GPT's route: plain torch.mm
    assert ((one_text - c(x.reshape(1, 5, k))).abs().max() / want.abs().max()).item() <= 1e-5
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        assert torch.equal(c(x), got)
    finally:
        torch.set_num_threads(threads)


def test_int4_mode_quantises_the_blocks_and_keeps_the_heads_in_int8(hub_dir):
    tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int4")
    for model in (tts.semantic_model, tts.coarse_model, tts.fine_model):
        heads = [model.lm_head] if hasattr(model, "lm_head") else list(model.lm_heads)
        assert all(isinstance(h, Int8Linear) for h in heads)
        blocks = [m for b in model.layers for m in b.modules() if hasattr(m, "in_features")]
        assert blocks and all(isinstance(m, Int4Linear) for m in blocks)
    kinds = tts.backend.models["semantic"].linears
    assert set(kinds) <= {"int4-c", "int4-torch", "int8-c", "int8-torch"} and sum(kinds.values()) == 9
    assert str(tts.backend).startswith("backend cpu on cpu, float32, int4")
    audio = tts.generate("the dog is cute", semantic_temperature=0, coarse_temperature=0, fine_temperature=0,
                         max_semantic_tokens=20)
    assert audio.audio.size > 0 and bool(torch.isfinite(torch.from_numpy(audio.audio)).all())


def test_fine_passes_in_bfloat16_stay_close_to_the_float32_route():
    """The fine GPT's long products as bfloat16 GEMMs: x_q's integers exact, q * d rounded once, float32 sums, the
    result rounded once: within a few bfloat16 roundings of the float32 route, far inside int4's own error."""
    torch.manual_seed(0)
    linear = nn.Linear(192, 96)
    plain = Int4Linear(linear, native=False, one_text=True)
    half = Int4Linear(linear, native=False, one_text=True, route="bfloat16")
    assert (plain.long_route, half.long_route) == ("float32", "bfloat16")
    x = torch.randn(1, 300, 192)  # one text, 300 positions
    want, got = plain(x), half(x)
    assert got.dtype == torch.float32 and not torch.equal(got, want)  # it did run in bfloat16
    assert (got - want).abs().max() <= 2 ** -7 * want.abs().max()
    exact = linear(x)
    assert (got - exact).abs().max() <= 1.05 * (want - exact).abs().max() + 2 ** -7 * want.abs().max()
    assert Int4Linear(linear, native=False, route="bfloat16").long_route == "float32"  # prefills of texts: never


@pytest.mark.parametrize("fastest", ["float32", "bfloat16", "amx"])
def test_the_int4_fine_passes_take_the_route_measured_fastest(hub_dir, monkeypatch, tmp_path, fastest):
    """Each shape's route is timed at first use (the slower ones made so by a sleep here), and the report lists the
    measurement: the fine GPT's layers take it; the prefills' (the other GPTs') only where it keeps a row's numbers
    whatever its batch (float32 on oneDNN, or the tiles). "amx": where this CPU has the tiles."""
    from fastbark.backends import cpu
    from fastbark.backends.cpu.int4 import int4_routes
    if fastest not in int4_routes(amx=True):
        pytest.skip("no AMX tiles on this CPU or build")

    def slowed(route):
        def slow(x, w):
            time.sleep(0.03)  # far beyond these small products' time, even on a busy machine
            return route(x, w)
        return slow
    monkeypatch.setattr(cpu, "int4_routes", lambda amx, one_text=True: {
        name: route if name == fastest else slowed(route) for name, route in int4_routes(amx, one_text).items()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # measured afresh
    tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int4")
    measured = [m for m in tts.backend.measured if m.startswith("int4 products ")]
    assert measured and all(f": {fastest} (" in m for m in measured), measured
    fine = {m.long_route for m in tts.fine_model.modules() if isinstance(m, Int4Linear)}
    others = {m.long_route for model in (tts.semantic_model, tts.coarse_model) for m in model.modules()
              if isinstance(m, Int4Linear)}
    assert fine == {fastest}
    prefill_routes = set(int4_routes(amx=True, one_text=False))
    assert (others == {fastest}) if fastest in prefill_routes else (others <= prefill_routes)
    measured = [m for m in tts.backend.measured if m.startswith("int4 prefill products ")]
    assert bool(measured) == (len(prefill_routes) > 1)  # timed only where there is a choice
    plain = fastbark.Bark.from_pretrained(hub_dir, quantize="int4", cpu_kernel="c")  # unmeasured: float32
    assert {m.long_route for m in plain.fine_model.modules() if isinstance(m, Int4Linear)} == {"float32"}
