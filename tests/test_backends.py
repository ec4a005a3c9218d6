"""Backends: what `select` chooses for each engine option, its report, and the plain torch backend that a
CUDA user runs today, exercised on the CPU in float32, float16 and bfloat16."""

import numpy as np
import pytest
import torch

import fastbark
import reference as ref
from fastbark.backends.cpu.attention import bf16_attention
from fastbark.backends.cpu.decode_step import BF16, F32, INT4, INT8, decode_step_works
from fastbark.backends.cpu.int4 import int4_kernel
from fastbark.backends.cpu.amx import KIND_BF16, KIND_S8, AmxBf16Linear, amx_kernels, plain_runs
from fastbark.backends.cpu.int8 import Int8Linear, int8_kernels
from fastbark.backends.cpu.library import has_vnni, load_kernels
from fastbark.backends.cpu.linears import Bf16ViaFloat32Linear, packing_available
from fastbark.backends.cpu.tuning import KNOBS, TUNING_LABEL

GREEDY = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, min_eos_p=None)
N_DECODER_LINEARS = 2 * 4 + 1  # the tiny causal GPTs: 2 layers x (att_proj, out_proj, in_proj, out_proj) + lm_head
N_FINE_LINEARS = 2 * 4 + 7  # 2 layers x 4 + one head per predicted codebook (1..7)


def expected_report(dtype: str, quantize, kernel: str) -> dict:
    """What the CPU backend must choose on this machine, from the same capability probes it uses."""
    c = kernel in ("auto", "c") and load_kernels() is not None
    fast = quantize is not None or dtype == "bfloat16"
    whole = "bf16-c" if fast and c and bf16_attention() is not None else "sdpa"
    if whole == "bf16-c" and kernel == "auto":
        whole = None  # measured against SDPA on this machine: checked against the report's measurement below
    one_query = "matmul" if dtype != "float32" else "sdpa"
    fallbacks = set()
    if fast and c and whole == "sdpa":
        fallbacks.add("bfloat16 attention kernel")
    step_measured = False  # the one-call step against the blocks, timed on this machine
    if quantize is not None:
        kind = "int8-c" if c and int8_kernels() is not None else "int8-torch"
        fused = c and decode_step_works(INT8 if quantize == "int8" else INT4)
        step_measured = fused and kernel == "auto"
        decoder = {kind: N_DECODER_LINEARS}
        fine = {kind: N_FINE_LINEARS}
        if quantize == "int4":  # the blocks in int4, the heads in int8
            kind4 = "int4-c" if c and int4_kernel() is not None else "int4-torch"
            decoder, fine = {kind4: N_DECODER_LINEARS - 1, kind: 1}, {kind4: 2 * 4, kind: N_FINE_LINEARS - 2 * 4}
    else:
        fused = (dtype == "bfloat16" and c and decode_step_works(BF16)) or \
            (dtype == "float32" and c and decode_step_works(F32))
        step_measured = fused and dtype in ("float32", "bfloat16") and kernel == "auto"
        fine = {"torch": N_FINE_LINEARS}
        if kernel == "plain":
            decoder = {"torch": N_DECODER_LINEARS}
        elif dtype == "float32" and kernel == "auto":
            decoder = None  # measured on this machine: checked against the report's measurements below
        elif c and dtype == "float32":
            decoder = {"c": N_DECODER_LINEARS}
        elif dtype == "float16":
            decoder = {"torch": N_DECODER_LINEARS}
        elif not packing_available(torch.bfloat16 if dtype == "bfloat16" else torch.float32):
            decoder = {"torch": N_DECODER_LINEARS}
            fallbacks.add("oneDNN packing")
        elif fused:
            decoder = {"torch": N_DECODER_LINEARS - 1, "onednn": 1}  # the step reads the blocks' weights
        else:
            decoder = {"onednn": N_DECODER_LINEARS}
    if fast and c and not fused:
        fallbacks.add("one-call decode step")
    if quantize is not None:
        fallbacks.add("int8 products?")  # when the big products' route measured fastest is via float: see below
    step = None if step_measured else "fused-c" if fused else "blocks"
    return dict(decoder=decoder, fine=fine, step=step, whole=whole, one_query=one_query, fallbacks=fallbacks)


SWAPPED = {"via-float32": ("torch", "onednn"), "amx-bf16": ("torch",), "int8-amx": ("int8-c",)}


def with_swapped(kinds: dict, model) -> dict:
    """The layer kinds `kinds` with the layers that a measured route put in another's place counted as such:
    Bf16ViaFloat32Linear (never packed: they take the place of plain layers, or of the packed head), and the fine
    GPT's layers on AMX tiles (amx.py) in place of plain bfloat16 or C int8 ones."""
    out = dict(kinds)
    for new, olds in SWAPPED.items():
        n = sum(getattr(m, "kind", None) == new for m in model.modules())
        out[new] = out.get(new, 0) + n
        for kind in olds:
            taken = min(n, out.get(kind, 0))
            out[kind] = out.get(kind, 0) - taken
            n -= taken
        assert n == 0, kinds
    return {k: v for k, v in out.items() if v}


def measured_routes(report, label: str) -> dict:
    """The long products' routes in the report: (in, out, which AMX tiles' route was a candidate: "amx" over packed
    weights, "amx-plain" over plain ones, or None) -> chosen."""
    routes = {}
    for line in report.measured:
        if line.startswith(label):
            shape, rest = line.removeprefix(label).split(": ", 1)
            candidates = {part.strip(" (").split(" ")[0] for part in rest.split(" ", 1)[1].split(", ")}
            tiles = next((name for name in ("amx", "amx-plain") if name in candidates), None)
            routes[(*map(int, shape.split(" -> ")), tiles)] = rest.split(" ")[0]
    return routes


COMBOS = [(dtype, None, kernel) for dtype in ("float32", "bfloat16", "float16")
          for kernel in ("auto", "c", "onednn", "plain")] + \
         [(dtype, q, kernel) for q in ("int8", "int4") for dtype in ("float32", "bfloat16")
          for kernel in ("auto", "onednn", "plain")]


@pytest.mark.parametrize("dtype, quantize, kernel", COMBOS)
def test_cpu_backend_report(hub_dir, dtype, quantize, kernel):
    tts = fastbark.Bark.from_pretrained(hub_dir, dtype=dtype, quantize=quantize, cpu_kernel=kernel)
    report, want = tts.backend, expected_report(dtype, quantize, kernel)
    assert report.name == "cpu" and report.options == tts.options
    assert report.options.dtype == dtype and report.options.quantize == quantize
    measured = want["decoder"] is None
    steps = [m for m in report.measured if m.startswith("decode step")]
    attention = [m for m in report.measured if m.startswith("whole-sequence attention")]
    tuning = [m for m in report.measured if m.startswith(TUNING_LABEL)]  # the C library's, once per machine
    assert len(tuning) == (len(KNOBS) if load_kernels() is not None and kernel in ("auto", "c") else 0)
    decode_choices = [m for m in report.measured if not m.startswith(
        ("int8 products", "int4 products", "int4 prefill products", "bfloat16 products", "decode step",
         "whole-sequence attention", TUNING_LABEL))]
    # int4 with "auto": each shape's fine-pass products as float32 or bfloat16 GEMMs, as measured here
    int4 = {tuple(map(int, m.split(": ")[0].removeprefix("int4 products ").split(" -> "))): m.split(": ")[1].split(" ")[0]
            for m in report.measured if m.startswith("int4 products")}
    assert bool(int4) == (quantize == "int4" and kernel == "auto")
    for layer in tts.fine_model.modules():
        if hasattr(layer, "long_route"):
            assert layer.long_route == int4.get((layer.in_features, layer.out_features), "float32")
    # and the prefills' (the other GPTs'), on oneDNN or on AMX tiles, where the tiles offered a choice
    prefill = {tuple(map(int, m.split(": ")[0].removeprefix("int4 prefill products ").split(" -> "))):
               m.split(": ")[1].split(" ")[0] for m in report.measured if m.startswith("int4 prefill products")}
    assert bool(prefill) == (quantize == "int4" and kernel == "auto" and amx_kernels() is not None)
    for layer in (*tts.semantic_model.modules(), *tts.coarse_model.modules()):
        if hasattr(layer, "long_route"):
            assert layer.long_route == prefill.get((layer.in_features, layer.out_features), "float32")
    # bfloat16 with "auto": each shape's long products in bfloat16 or as float32 GEMMs, as measured here
    half = {tuple(map(int, m.split(": ")[0].removeprefix("bfloat16 products ").split(" -> "))): m.split(": ")[1]
            for m in report.measured if m.startswith("bfloat16 products")}
    assert bool(half) == (dtype == "bfloat16" and quantize is None and kernel == "auto")
    via = {shape for shape, line in half.items() if line.startswith("via-float32 (")}
    if via:
        want["fallbacks"].add("bfloat16 products")
    half_routes, int8_routes = measured_routes(report, "bfloat16 products "), measured_routes(report, "int8 products ")
    tiles = amx_kernels() is not None and kernel == "auto"  # the products may take the AMX tiles
    for model in (tts.semantic_model, tts.coarse_model, tts.fine_model):  # a layer is swapped where its shape chose so
        fine = model is tts.fine_model
        # the fine GPT's candidates: the tiles over packed weights; the prefills': over the plain weights they keep
        # (not the decode stages' heads, which read one position a row)
        key_tiles = ("amx" if fine else "amx-plain") if tiles else None
        for layer in model.modules():
            if hasattr(layer, "in_features") and hasattr(layer, "out_features"):
                plain = not fine and layer is not model.lm_head and \
                    plain_runs(layer.out_features, layer.in_features, KIND_BF16 if half_routes else KIND_S8)
                key = (layer.in_features, layer.out_features, key_tiles if fine or plain else None)
                if half_routes:
                    route = half_routes[key]
                    assert isinstance(layer, Bf16ViaFloat32Linear) == (route == "via-float32"), (key, type(layer))
                    assert isinstance(layer, AmxBf16Linear) == route.startswith("amx"), (key, type(layer))
                    if isinstance(layer, AmxBf16Linear):  # no packed copy of the decode stages' weights
                        assert (layer.weight_tiles is None) == (route == "amx-plain")
                if isinstance(layer, Int8Linear) and int8_routes:
                    assert layer.route == int8_routes[key]
                    assert (layer.kind == "int8-amx") == layer.route.startswith("amx")
                    assert hasattr(layer, "weight_tiles") == (layer.route == "amx")
    assert len(attention) == (want["whole"] is None)  # the fast modes' C attention, timed against SDPA
    if want["whole"] is None:  # what was measured faster runs; where SDPA won, the report says so
        want["whole"] = attention[0].split(": ")[1].split(" ")[0]
        if want["whole"] == "sdpa":
            want["fallbacks"].add("bfloat16 attention kernel")
    assert len(steps) == (2 if want["step"] is None else 0)  # semantic and coarse (their heads differ)
    if measured:  # chosen by measurement: every choice reported, and what runs is what was chosen
        chosen = {"torch" if k == "plain" else k for k in (line.split(": ")[1].split(" ")[0] for line in decode_choices)}
        kinds = set(report.models["semantic"].linears) | set(report.models["coarse"].linears)
        if any(": fused-c (" in line for line in steps):  # its layers hold their plain weights, in GemvLinear
            assert kinds <= chosen | {"c"}
        else:
            assert kinds == chosen
    else:
        assert decode_choices == []
    for name, model in (("semantic", tts.semantic_model), ("coarse", tts.coarse_model)):
        m = report.models[name]
        if measured:  # the two heads differ in shape, so the models' counts may differ
            assert sum(m.linears.values()) == N_DECODER_LINEARS
            want["decoder"] = m.linears
        step = want["step"]
        if step is None:  # as measured for this model
            step = next(line for line in steps if f"-> {model.config.output_vocab_size}: " in line).split(": ")[1]
            step = step.split(" ")[0]
        decoder = want["decoder"]
        if dtype == "bfloat16" and step == "blocks" and want["step"] is None:  # the blocks measured faster: packed
            decoder = {"onednn": N_DECODER_LINEARS}
        decoder = with_swapped(decoder, model)
        assert (m.linears, m.decode_step, m.whole_attention, m.one_query_attention) == \
            (decoder, step, want["whole"], want["one_query"]), name
    fine = report.models["fine"]
    assert (fine.linears, fine.decode_step, fine.whole_attention) == \
        (with_swapped(want["fine"], tts.fine_model), "", want["whole"])
    if "int8 products?" in want["fallbacks"]:
        want["fallbacks"].discard("int8 products?")
        routes = [m for m in report.measured if m.startswith("int8 products")]
        assert routes if kernel != "plain" else not routes
        if any(": via-float (" in m for m in routes):
            want["fallbacks"].add("int8 products")
            line = next(f for f in report.fallbacks if f.startswith("int8 products"))  # names each slower shape,
            assert all(m.split(": ")[0].removeprefix("int8 products ") in line  # and blames VNNI only where absent
                       for m in routes if ": via-float (" in m) and ("(no VNNI)" in line) == (not has_vnni())
    assert {f.split(":")[0] for f in report.fallbacks} == want["fallbacks"]
    # the report is read off the models themselves
    kinds = {type(m).__name__ for m in tts.semantic_model.modules()}
    assert ("GemvLinear" in kinds) == ("c" in report.models["semantic"].linears)
    assert ("PackedLinear" in kinds) == ("onednn" in report.models["semantic"].linears)
    assert ("Int8Linear" in kinds) == (quantize is not None)
    assert ("Int4Linear" in kinds) == (quantize == "int4")
    text = str(report)
    assert text.startswith(f"backend cpu on cpu, {dtype}") and "semantic:" in text


def test_fallback_is_reported_without_a_compiler(monkeypatch, hub_dir):
    from fastbark.backends.cpu import library
    monkeypatch.setattr(library.shutil, "which", lambda name: None)
    library.clear_cache()
    try:
        with pytest.warns(UserWarning, match="no C compiler"):
            tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int8")
        assert tts.backend.fallbacks[0] == "C kernels: no C compiler (cc) found"
        assert {f.split(":")[0] for f in tts.backend.fallbacks[1:]} <= {"int8 products"}
        assert tts.backend.models["semantic"].linears == {"int8-torch": N_DECODER_LINEARS}
        assert tts.backend.models["semantic"].decode_step == "blocks"
    finally:
        library.clear_cache()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_backend_swaps_nothing(hub_dir, dtype):
    tts = fastbark.Bark.from_pretrained(hub_dir, backend="torch", dtype=dtype)
    assert tts.backend.name == "torch" and tts.backend.fallbacks == ()
    for name, model in (("semantic", tts.semantic_model), ("coarse", tts.coarse_model), ("fine", tts.fine_model)):
        m = tts.backend.models[name]
        assert set(m.linears) == {"torch"} and m.whole_attention == "sdpa"
        assert all(type(x) is torch.nn.Linear for x in model.modules() if hasattr(x, "in_features"))
        assert all(type(block.attn.kernel) is fastbark.models.gpt.AttentionKernel for block in model.layers)


def test_bad_backend_options(hub_dir):
    with pytest.raises(fastbark.BadInput, match="backend .cuda-graphs. is unknown; accepted: auto, cpu, cuda, torch"):
        fastbark.Bark.from_pretrained(hub_dir, backend="cuda-graphs")
    with pytest.raises(fastbark.BadInput, match="needs the cpu backend"):
        fastbark.Bark.from_pretrained(hub_dir, backend="torch", quantize="int8")
    with pytest.raises(fastbark.BadInput, match="unknown option"):
        fastbark.Bark.from_pretrained(hub_dir, kernel="c")
    with pytest.raises(fastbark.BadInput, match="threads"):
        fastbark.EngineOptions(threads=0)


@pytest.fixture(scope="module")
def torch_tts(hub_dir):
    return fastbark.Bark.from_pretrained(hub_dir, backend="torch")


def test_torch_backend_float32_matches_the_reference(torch_tts, tts, reference, voice_arrays):
    """Every line a GPU runs, on the CPU: the plain backend gives the reference's tokens."""
    for text, voice in (("the dog is cute", None), ("Hello world [laughs] ♪", "announcer")):
        ours = torch_tts.text_to_semantic(text, voice=voice, temperature=0, min_eos_p=None)
        theirs = ref.semantic(reference, torch_tts.tokenize(text), voice_arrays.get(voice))
        np.testing.assert_array_equal(ours, theirs)
    semantic = np.random.default_rng(1).integers(0, 10_000, 100)
    np.testing.assert_array_equal(torch_tts.semantic_to_coarse(semantic, voice="announcer", temperature=0),
                                  ref.coarse(reference, semantic, voice_arrays["announcer"]))
    coarse = np.random.default_rng(2).integers(0, 1024, (2, 1100))
    np.testing.assert_array_equal(torch_tts.coarse_to_fine(coarse, voice="v2/en_speaker_1", temperature=0),
                                  ref.fine(reference, coarse, voice_arrays["v2/en_speaker_1"]))
    a = torch_tts.generate("café naïve", voice="announcer", **GREEDY)
    b = tts.generate("café naïve", voice="announcer", **GREEDY)
    np.testing.assert_array_equal(a.fine_tokens, b.fine_tokens)
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_backend_batches(hub_dir, dtype):
    """The plain backend's batches: each text gets the tokens it gets alone (greedy), in every dtype a GPU
    would use, on the CPU."""
    tts = fastbark.Bark.from_pretrained(hub_dir, backend="torch", dtype=dtype)
    texts = ["the dog is cute", "Hello world [laughs] ♪", "café naïve"]
    batch = tts.generate(texts, voice="v2/en_speaker_1", max_semantic_tokens=60, **GREEDY)
    for text, in_batch in zip(texts, batch):
        alone = tts.generate(text, voice="v2/en_speaker_1", max_semantic_tokens=60, **GREEDY)
        np.testing.assert_array_equal(in_batch.semantic_tokens, alone.semantic_tokens)
        np.testing.assert_array_equal(in_batch.fine_tokens, alone.fine_tokens)
        assert in_batch.audio.dtype == np.float32 and np.isfinite(in_batch.audio).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_backend_half_precision_stays_close(hub_dir, tts, dtype):
    """Teacher-forced, the plain backend in half precision stays near float32 (the fast modes' bounds)."""
    from fidelity import measure
    results = measure(tts, fastbark.Bark.from_pretrained(hub_dir, backend="torch", dtype=dtype),
                      "the dog is cute", steps=48)
    for stage, r in results.items():
        assert 0 < r["max_rel_logit_error"] < 0.05, stage
        assert r["greedy_agreement"] >= 0.9, stage


# ------------------------------------------------------------------ attention= (issue 18, item 4)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_math_attention_runs_every_line_of_the_named_kernel_and_changes_no_token(hub_dir, tts, backend):
    """`attention="math"` goes through the same code as "flash" (SdpaKernel, one SDPA kernel, nothing else);
    on the CPU its greedy tokens equal the default engine's."""
    named = fastbark.Bark.from_pretrained(hub_dir, backend=backend, attention="math")
    for report in named.backend.models.values():
        assert report.whole_attention == "math"
    assert named.backend.models["semantic"].one_query_attention == tts.backend.models["semantic"].one_query_attention
    greedy = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, max_semantic_tokens=20)
    for voice in (None, "announcer"):
        got, want = named.generate("the dog is cute", voice=voice, **greedy), tts.generate("the dog is cute",
                                                                                          voice=voice, **greedy)
        np.testing.assert_array_equal(got.semantic_tokens, want.semantic_tokens)
        np.testing.assert_array_equal(got.fine_tokens, want.fine_tokens)


def test_a_named_attention_keeps_the_backends_step_and_caches(hub_dir):
    """attention= swaps the whole-sequence kernel only: the int8 mode's one-call step and its int8 caches stay."""
    default = fastbark.Bark.from_pretrained(hub_dir, quantize="int8", cpu_kernel="c")
    named = fastbark.Bark.from_pretrained(hub_dir, quantize="int8", cpu_kernel="c", attention="math")
    for name in ("semantic", "coarse"):
        got, want = named.backend.models[name], default.backend.models[name]
        assert (got.whole_attention, got.decode_step, got.kv_cache) == ("math", want.decode_step, want.kv_cache)
        assert getattr(named, f"{name}_model").new_cache(1, 2).k.dtype == \
            getattr(default, f"{name}_model").new_cache(1, 2).k.dtype


def test_flash_attention_is_refused_where_it_cannot_run(capsys):
    with pytest.raises(fastbark.BadInput, match="attention flash .* runs on a CUDA GPU in float16 or bfloat16"):
        fastbark.EngineOptions(attention="flash")
    with pytest.raises(fastbark.BadInput, match="attention 'turbo' is unknown; accepted: auto, flash, math"):
        fastbark.EngineOptions(attention="turbo")
    from fastbark.cli import main
    assert main(["say", "hi", "--attention", "flash", "-o", "x.wav"]) == 2
    assert capsys.readouterr().err.startswith("fastbark: error: --attention flash")
