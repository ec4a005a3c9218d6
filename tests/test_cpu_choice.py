"""Kernels chosen by measuring this machine (backends/cpu/choice.py): only candidates that pass their checks
(batch invariance, the same bits on any thread count, right values) are timed, the fastest runs, a slow one
never does, and the measurements are cached and reported. Also: thread counts above the cores are capped,
and a tokenizer that cannot write a word is refused."""

import os
import time

import pytest
import torch
from torch import nn

import fastbark
from fastbark.backends.cpu import choice
from fastbark.backends.cpu.choice import Candidate, ChoiceCache, PlainLinear, choose, choose_linears
from fastbark.backends.cpu.linears import GemvLinear, pack_linear, packing_available
from fastbark.backends.cpu.library import load_kernels


class Slow(PlainLinear):
    """Correct, batch invariant (rows one by one), and slow."""

    kind = "slow"

    def forward(self, x):
        time.sleep(0.002)
        return torch.cat([super(Slow, self).forward(x[i: i + 1]) for i in range(x.shape[0])])


class RowWise(PlainLinear):
    """Correct and batch invariant: every row on its own."""

    kind = "rowwise"

    def forward(self, x):
        return torch.cat([super(RowWise, self).forward(x[i: i + 1]) for i in range(x.shape[0])])


class BatchDependent(PlainLinear):
    """Fast, but a row's bits depend on the batch it is in."""

    def forward(self, x):
        return super().forward(x) + x.shape[0] * 1e-7


class HeadDependent(RowWise):
    """Batch invariant for (B, 1, K) rows, but not for a head's (B, K) (GemvLinear's bug before the check)."""

    def forward(self, x):
        return super().forward(x) + (x.shape[0] * 1e-7 if x.dim() == 2 else 0.0)


class ThreadDependent(RowWise):
    def forward(self, x):
        return super().forward(x) + torch.get_num_threads() * 1e-7


class Wrong(RowWise):
    def forward(self, x):
        return super().forward(x) * 1.01


def test_the_fastest_checked_candidate_is_chosen_and_a_slow_one_never():
    linear = nn.Linear(64, 48)
    result, made = choose(linear, [Candidate("slow", Slow), Candidate("rowwise", RowWise)])
    assert result.chosen == "rowwise" and result.ms["slow"] > result.ms["rowwise"] and set(made) == {"slow", "rowwise"}
    assert "rowwise" in str(result) and "slow" in str(result)


@pytest.mark.parametrize("bad, why", [(BatchDependent, "a row alone differs"), (Wrong, "values are wrong"),
                                      (HeadDependent, "a head's row alone differs"),
                                      (ThreadDependent, "one thread gives other bits")])
def test_a_candidate_that_fails_its_checks_is_never_chosen_however_fast(bad, why):
    if bad is ThreadDependent and torch.get_num_threads() < 2:
        pytest.skip("one thread only")
    result, _ = choose(nn.Linear(64, 48), [Candidate("bad", bad), Candidate("slow", Slow)])
    assert result.chosen == "slow" and why in result.refused["bad"] and "bad" not in result.ms


def test_no_eligible_candidate_is_an_error_and_unavailable_ones_are_skipped():
    with pytest.raises(RuntimeError, match="no kernel passed"):
        choose(nn.Linear(8, 8), [Candidate("bad", BatchDependent), Candidate("none", lambda linear: None)])
    result, _ = choose(nn.Linear(8, 8), [Candidate("none", lambda linear: None), Candidate("rowwise", RowWise)])
    assert result.refused == {"none": "not available here"} and result.chosen == "rowwise"


def test_choices_are_cached_and_swapped_per_shape(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 32))
    model.swap_linears = lambda make: fastbark.models.gpt.swap_linears(model, make)
    cache = ChoiceCache(tmp_path, ["a machine"])
    choices = choose_linears(model, [Candidate("slow", Slow), Candidate("rowwise", RowWise)], cache)
    assert [c.shape for c in choices] == [(16, 32), (32, 16)]  # two shapes measured, three layers swapped
    assert [type(m).__name__ for m in model] == ["RowWise"] * 3
    assert cache.path.is_file()
    monkeypatch.setattr(choice, "choose", lambda *a: pytest.fail("measured again"))
    again = nn.Sequential(nn.Linear(16, 32))
    again.swap_linears = lambda make: fastbark.models.gpt.swap_linears(again, make)
    cached = choose_linears(again, [Candidate("slow", Slow), Candidate("rowwise", RowWise)],
                            ChoiceCache(tmp_path, ["a machine"]))
    assert cached[0].chosen == "rowwise" and type(again[0]).__name__ == "RowWise"
    assert ChoiceCache(tmp_path, ["another machine"]).get("16x32+bias:slow,rowwise") is None


def test_the_real_candidates_keep_float32s_promises():
    """The C kernel and oneDNN pass the checks on this machine; plain F.linear's verdict is whatever it is."""
    linear = nn.Linear(96, 80, bias=False)
    candidates = [Candidate("plain", PlainLinear)]
    if load_kernels() is not None:
        candidates.append(Candidate("c", GemvLinear))
    if packing_available(torch.float32):
        candidates.append(Candidate("onednn", pack_linear))
    result, _ = choose(linear, candidates)
    assert set(result.ms) | set(result.refused) == {c.name for c in candidates}
    assert {"c", "onednn"} & {c.name for c in candidates} <= set(result.ms)


def test_the_c_kernel_keeps_a_rows_bits_at_a_head():
    """A head is called with (B, K) rows: each row must take the C kernel whatever B is (oneDNN's bits differ)."""
    if load_kernels() is None:
        pytest.skip("no C kernels on this machine")
    layer, x = GemvLinear(nn.Linear(96, 80)), torch.randn(5, 96)
    with torch.inference_mode():
        batch = layer(x)
        assert all(torch.equal(layer(x[i: i + 1]), batch[i: i + 1]) for i in range(5))
        assert torch.equal(layer(x[:, None])[:, 0], batch)  # the same bits as a decode step's (B, 1, K)


def test_the_engine_reports_what_it_measured(hub_dir):
    from fastbark.backends.cpu.tuning import TUNING_LABEL
    tts = fastbark.Bark.from_pretrained(hub_dir)
    assert tts.backend.measured and all("->" in m or m.startswith(TUNING_LABEL) for m in tts.backend.measured)
    assert "measured: 32 -> 96" in str(tts.backend)
    kinds = set(tts.backend.models["semantic"].linears)
    assert kinds <= {"c", "onednn", "torch"}
    forced = fastbark.Bark.from_pretrained(hub_dir, cpu_kernel="c")  # nothing measured for the engine itself;
    assert all(m.startswith(TUNING_LABEL) for m in forced.backend.measured)  # the library was tuned once per machine


def test_threads_above_the_cores_are_capped_and_absurd_ones_refused(hub_dir):
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match=f"more than the {cores} cores"):
            fastbark.Bark.from_pretrained(hub_dir, threads=cores + 3)
        assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)
    for bad in (10**9, 0, -1, 2.5):
        with pytest.raises(fastbark.BadInput, match="threads"):
            fastbark.Bark.from_pretrained(hub_dir, threads=bad)


def test_a_tokenizer_that_cannot_write_a_word_is_refused(tmp_path):
    from fastbark.text.tokenizer import TextTokenizer
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    with pytest.raises(fastbark.CheckpointError, match="cannot produce a single word"):
        TextTokenizer.from_file(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n", encoding="utf-8")
    assert TextTokenizer.from_file(tmp_path / "vocab.txt").encode("hello") == [5]


def test_int8_big_products_take_the_route_measured_fastest(tmp_path):
    from fastbark.backends.cpu.choice import choose_int_route
    from fastbark.backends.cpu.int8 import ROUTES

    def slow(x_q, w_q):
        time.sleep(0.003)
        return ROUTES["int_mm"](x_q, w_q)

    def off_by_one(x_q, w_q):
        return ROUTES["int_mm"](x_q, w_q) + 1
    cache = ChoiceCache(tmp_path, ["a machine"])
    result = choose_int_route(64, 48, {"reference": slow, "wrong": off_by_one, "via-float": ROUTES["via-float"]}, cache)
    assert result.chosen == "via-float" and result.refused == {"wrong": "other bits than the reference product"}
    assert str(result).startswith("int8 products 64 -> 48: via-float")
    again = ChoiceCache(tmp_path, ["a machine"]).get("int8 64x48:reference,wrong,via-float")
    assert again == result  # read back from the file, label and all


def test_bfloat16_long_products_take_the_route_measured_fastest(tmp_path):
    """bfloat16 GEMMs or float32 GEMMs over the same values, whichever is faster here; a route whose values are
    off is refused whatever its speed; the choice is cached."""
    from fastbark.backends.cpu.choice import choose_half_route
    from fastbark.backends.cpu.linears import HALF_ROUTES

    def slow(x, w):
        time.sleep(0.003)
        return HALF_ROUTES["bfloat16"](x, w)

    def doubled(x, w):
        return HALF_ROUTES["via-float32"](x, w) * 2
    cache = ChoiceCache(tmp_path, ["a machine"])
    routes = {"reference": slow, "wrong": doubled, "via-float32": HALF_ROUTES["via-float32"]}
    result = choose_half_route(64, 48, routes, cache)
    assert result.chosen == "via-float32" and result.refused == {"wrong": "other values than the reference product"}
    assert str(result).startswith("bfloat16 products 64 -> 48: via-float32")
    assert ChoiceCache(tmp_path, ["a machine"]).get("bfloat16 64x48:reference,wrong,via-float32") == result


def test_a_bfloat16_layer_via_float32():
    """Its long products: float32 sums of the exact products of the bfloat16 values, rounded to bfloat16 (within a
    bfloat16 rounding of torch's bfloat16 product), each row as alone; one position per row: torch's bfloat16
    product itself."""
    from fastbark.backends.cpu.linears import Bf16ViaFloat32Linear
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(96, 40).to(torch.bfloat16)
    layer = Bf16ViaFloat32Linear(linear)
    x = torch.randn(3, 17, 96, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        y = layer(x)
        want = (x.double() @ linear.weight.double().t() + linear.bias.double())  # exact
        assert y.dtype == torch.bfloat16 and y.shape == (3, 17, 40)
        assert ((y.double() - want).abs() <= want.abs() * 2 ** -8 + 1e-6).all()  # one bfloat16 rounding
        assert (y.double() - linear(x).double()).abs().max() <= 2 ** -6 * want.abs().max()
        assert all(torch.equal(layer(x[i: i + 1]), y[i: i + 1]) for i in range(3))
        one = x[:, :1]  # (3, 1, 96): a decode step's rows
        assert torch.equal(layer(one), linear(one))


def test_whole_sequence_attention_takes_the_way_measured_fastest(tmp_path):
    """The fast modes' C attention runs only where it measured faster than SDPA; a wrong or unrunnable way is
    refused whatever its speed; the choice is cached."""
    from fastbark.backends.cpu.attention import sdpa_whole
    from fastbark.backends.cpu.choice import choose_whole_attention

    def slow(qkv, n_head, causal):
        time.sleep(0.003)
        return sdpa_whole(qkv, n_head, causal)
    def batch_dependent(qkv, n_head, causal):  # close to SDPA, but a row's bits depend on its batch
        return sdpa_whole(qkv, n_head, causal) + 1e-4 * (qkv.shape[0] - 1)
    ways = {"sdpa": sdpa_whole, "slow": slow, "wrong": lambda *a: sdpa_whole(*a) + 1, "none": lambda *a: None,
            "batch": batch_dependent}
    cache = ChoiceCache(tmp_path, ["a machine"])
    result = choose_whole_attention(2, 64, torch.float32, ways, cache)
    assert result.chosen == "sdpa" and set(result.ms) == {"sdpa", "slow"} and result.ms["slow"] > result.ms["sdpa"]
    assert result.refused == {"wrong": "its values are far from the reference's", "none": "cannot run this shape",
                              "batch": "a row alone differs from the same row in a batch"}
    assert str(result).startswith("whole-sequence attention 2 heads x 64: sdpa")
    assert ChoiceCache(tmp_path, ["a machine"]).get("attention 2x64 float32:sdpa,slow,wrong,none,batch") == result
    faster = choose_whole_attention(2, 64, torch.float32, {"sdpa": slow, "c": sdpa_whole}, None)
    assert faster.chosen == "c"


class StandIn:
    """A C attention kernel's stand-in (these tests run on every CPU): `way`, for heads of any size."""

    def __init__(self, way):
        self._way = way

    @staticmethod
    def runs(n_head: int, n_embd: int) -> bool:
        return True

    def __call__(self, qkv, n_head, causal):
        return self._way(qkv, n_head, causal)


@pytest.mark.parametrize("fastest", ["amx", "bf16-c", "sdpa", "sdpa-bf16"])
def test_the_engine_runs_the_whole_attention_measured_fastest(hub_dir, monkeypatch, tmp_path, fastest):
    """In a fast mode with cpu_kernel="auto", the C attention kernels on AMX tiles and on AVX512-BF16 (stand-ins here,
    computing SDPA: this test must run on every CPU), SDPA and (int8: float32 activations) SDPA in bfloat16 are
    timed; all but `fastest` are made slower by a sleep, and the report says what runs and why."""
    from fastbark.backends import cpu
    from fastbark.backends.cpu.attention import sdpa_bf16_whole, sdpa_whole

    def slowed(way):
        def slow(qkv, n_head, causal):
            time.sleep(0.005)
            return way(qkv, n_head, causal)
        return slow
    for name, getter in (("amx", "amx_attention"), ("bf16-c", "bf16_attention")):
        kernel = StandIn(sdpa_whole if fastest == name else slowed(sdpa_whole))
        monkeypatch.setattr(cpu, getter, lambda kernel=kernel: kernel)
    if fastest != "sdpa":
        monkeypatch.setattr(cpu, "sdpa_whole", slowed(sdpa_whole))
    if fastest != "sdpa-bf16":
        monkeypatch.setattr(cpu, "sdpa_bf16_whole", slowed(sdpa_bf16_whole))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # measured afresh
    report = fastbark.Bark.from_pretrained(hub_dir, quantize="int8").backend
    measured = [m for m in report.measured if m.startswith("whole-sequence attention ")]
    assert len(measured) == 1 and f": {fastest} (" in measured[0], measured
    assert all(f"{way} " in measured[0] for way in ("amx", "bf16-c", "sdpa", "sdpa-bf16"))  # each was timed
    for name in ("semantic", "coarse", "fine"):
        assert report.models[name].whole_attention == fastest
    slower = [f for f in report.fallbacks if f.startswith("bfloat16 attention kernel")]
    assert slower == (["bfloat16 attention kernel: measured slower than SDPA here; SDPA instead"]
                      if fastest == "sdpa" else [])
    forced = fastbark.Bark.from_pretrained(hub_dir, quantize="int8", cpu_kernel="c").backend
    assert forced.models["fine"].whole_attention == "amx"  # "c": a C kernel wherever one runs (the tiles first)
    assert not any(m.startswith("whole-sequence attention ") for m in forced.measured)
    monkeypatch.setattr(cpu, "amx_attention", lambda: None)
    forced = fastbark.Bark.from_pretrained(hub_dir, quantize="int8", cpu_kernel="c").backend
    assert forced.models["fine"].whole_attention == "bf16-c"


def test_sdpa_in_bfloat16_is_offered_where_activations_are_float32_only(hub_dir, monkeypatch, tmp_path):
    """bfloat16 mode: its activations are bfloat16 already, so SDPA in bfloat16 is SDPA; no third way is timed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    report = fastbark.Bark.from_pretrained(hub_dir, dtype="bfloat16").backend
    assert not any("sdpa-bf16" in m for m in report.measured)
    exact = fastbark.Bark.from_pretrained(hub_dir).backend  # the exact mode keeps float32 SDPA, unmeasured
    assert exact.models["fine"].whole_attention == "sdpa"
    assert not any(m.startswith("whole-sequence attention ") for m in exact.measured)
