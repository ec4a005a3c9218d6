"""The CUDA backend (backends/cuda/), every line that is not CUDA-specific, on the CPU: its decoder (static
caches padded to a multiple of rows, per-row prefills, the decode step from token ids with the position as
a tensor) gives the plain backend's greedy tokens in all three stages; `torch.compile(fullgraph=True)` of
its step has no graph break; the semantic stage's deferred end-of-speech reads change nothing. The CUDA
graphs themselves run in benchmarks/gpu.py, on a GPU."""

import types

import numpy as np
import pytest
import torch

import fastbark
from fastbark import BadInput, EngineOptions
from fastbark.backends.cuda import CudaBackend, sdpa_choice
from fastbark.backends.cuda.decoder import KEY_BUCKET, StaticCache, StaticDecoder
from fastbark.backends.cuda.passes import CapturedPasses
from fastbark.loading.layouts import load_parts
from fastbark.models.gpt import CausalGPT, GPTConfig
from fastbark.options import CoarseOptions, SemanticOptions
from fastbark.pipeline.coarse import generate_coarse
from fastbark.pipeline.sampling import Stream
from fastbark.pipeline.semantic import generate_semantic

GREEDY = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, min_eos_p=None)
TEXTS = ["the dog is cute", "Hello world [laughs] ♪", "café naïve"]


def cuda_on_cpu(hub_dir, rows: int = 16, attention: str = "sdpa", scratch_prefills: bool = False,
                **engine_options) -> fastbark.Bark:
    """An engine whose models run the CUDA backend's code on the CPU, uncaptured."""
    parts = load_parts(hub_dir, torch.device("cpu"), torch.float32)
    options = EngineOptions(**engine_options)

    class Backend(CudaBackend):  # `rows`: a batch of 3 pads to 4 with rows=4
        def prepare(self, models):
            fallbacks = super().prepare(models)
            for model in (models.semantic, models.coarse):
                model.use_kernels(model.layers[0].attn.kernel, None,
                                  StaticDecoder(model, graphs=False, rows=rows, attention=attention,
                                                scratch_prefills=scratch_prefills))
            return fallbacks
    return fastbark.Bark(parts, options, backend=Backend(options, graphs=False))


@pytest.fixture(scope="module")
def static_tts(hub_dir):
    return cuda_on_cpu(hub_dir)


@pytest.fixture(scope="module")
def torch_tts(hub_dir):
    return fastbark.Bark.from_pretrained(hub_dir, backend="torch")


def test_report_names_the_decoder_and_sdpas_kernels(static_tts):
    report = static_tts.backend
    assert report.name == "cuda" and report.fallbacks == ()
    for name in ("semantic", "coarse"):
        m = report.models[name]
        assert m.decode_step == "static" and m.whole_attention.startswith("sdpa")
        assert m.one_query_attention.startswith("masked sdpa")
    assert report.models["fine"].decode_step == ""
    # the kernel torch's own dispatcher picks, by name (on this CPU: its flash kernel or math)
    assert sdpa_choice(torch.device("cpu"), torch.float32, 2, 16, 257, 257, causal=True) in \
        ("sdpa-flash", "sdpa-math", "sdpa")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("voice", [None, "announcer"])
def test_greedy_tokens_equal_the_plain_backends_in_every_stage(static_tts, torch_tts, batch, voice):
    texts = TEXTS[:batch]
    got = static_tts.generate(texts, voice=voice, max_semantic_tokens=48, **GREEDY)
    want = torch_tts.generate(texts, voice=voice, max_semantic_tokens=48, **GREEDY)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.semantic_tokens, w.semantic_tokens)
        np.testing.assert_array_equal(g.coarse_tokens, w.coarse_tokens)
        np.testing.assert_array_equal(g.fine_tokens, w.fine_tokens)


@pytest.mark.parametrize("scratch_prefills", [False, True])
@pytest.mark.parametrize("voice", [None, "announcer"])
def test_carried_and_fresh_coarse_windows_over_padded_rows(hub_dir, torch_tts, voice, scratch_prefills):
    """Long enough for windows whose prompt is carried in the cache and windows prefilled afresh; three
    rows of different lengths in slabs of 4 rows (one padding row; rows leave as they finish). With
    `scratch_prefills` each row's prefill runs in a one-row scratch cache (on a GPU: a graph per prompt
    length) and is copied into its row."""
    static = cuda_on_cpu(hub_dir, rows=4, scratch_prefills=scratch_prefills)
    rng = np.random.default_rng(5)
    semantic = [rng.integers(0, 10_000, n) for n in (500, 380, 90)]
    options = CoarseOptions(temperature=0)
    got = generate_coarse(static.coarse_model, semantic, static.load_voice(voice), options)
    want = generate_coarse(torch_tts.coarse_model, semantic, torch_tts.load_voice(voice), options)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert [s.rows for s in static.coarse_model.decoder._slabs] == [4]  # one slab, reused by every window


def test_sampled_seeded_rows_and_their_streams_match(static_tts, torch_tts):
    """Sampled with seeds, rows ending at different steps (they leave the padded slab): the same tokens, and
    every stream made the same number of draws."""
    options = SemanticOptions(temperature=0.9, min_eos_p=0.002, max_tokens=120)
    results = []
    for tts in (static_tts, torch_tts):
        streams = [Stream(s) for s in (11, 12, 13)]
        ids = [tts.tokenize(t) for t in TEXTS]
        results.append((generate_semantic(tts.semantic_model, ids, None, options, streams), [s.draws for s in streams]))
    (got, got_draws), (want, want_draws) = results
    assert len({len(t) for t in want}) > 1  # the rows really end at different steps
    assert got_draws == want_draws
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("check_every", [3, 8])
def test_reading_the_end_flags_every_few_steps_changes_nothing(torch_tts, check_every):
    """The GPU reads its end-of-speech flags every 8 steps: rows that ended run on between reads, and their
    extra tokens and draws are discarded."""
    ids = [torch_tts.tokenize(t) for t in TEXTS + ["a b c d e f"]]
    for options in (SemanticOptions(temperature=0.9, min_eos_p=0.002, max_tokens=100),
                    SemanticOptions(temperature=0, min_eos_p=0.002, max_tokens=100)):
        runs = []
        for every in (1, check_every):
            streams = [Stream(7 + i) for i in range(len(ids))]
            out = generate_semantic(torch_tts.semantic_model, ids, None, options, streams, check_every=every)
            runs.append(([o.tolist() for o in out], [s.draws for s in streams]))
        assert runs[0] == runs[1]
        assert len({len(t) for t in runs[0][0]}) > 1


def test_static_cache_rows_leave_in_place():
    from fastbark.models.gpt import CausalGPT, GPTConfig
    model = CausalGPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, input_vocab_size=8, output_vocab_size=8,
                                block_size=16)).eval()
    decoder = StaticDecoder(model, graphs=False, rows=4)
    cache = decoder.new_cache(3, 16)
    assert isinstance(cache, StaticCache) and cache.k.shape[1] == 3 and cache.slab.k.shape[1] == 4
    for row in range(3):
        cache.k[:, row] = row
    kept = cache.select(torch.tensor([0, 2]))
    assert kept.slab is cache.slab and kept.k.shape[1] == 2
    assert kept.k[:, 0].eq(0).all() and kept.k[:, 1].eq(2).all()
    del cache
    assert decoder.new_cache(1, 16).slab is not kept.slab  # in use: another slab
    del kept
    assert len(decoder._slabs) == 2 and decoder.new_cache(4, 16).slab in decoder._slabs  # free again: reused


def test_graphs_are_dropped_when_the_weights_move():
    """Offload gives a model new memory for each stage: graphs captured over the old addresses must go."""
    from fastbark.models.gpt import CausalGPT, GPTConfig
    model = CausalGPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, input_vocab_size=8, output_vocab_size=8,
                                block_size=16)).eval()
    decoder = StaticDecoder(model, graphs=False)
    slab = decoder.new_cache(1, 16).slab
    slab.graphs[KEY_BUCKET] = "a graph"
    decoder.new_cache(1, 16)
    assert slab.graphs  # the same weights: kept
    model.lm_head.weight.data = model.lm_head.weight.data.clone()
    decoder.new_cache(1, 16)
    assert not slab.graphs


@pytest.mark.parametrize("attention", ["matmul", "sdpa-math"])
def test_every_step_attention_the_gpu_may_choose_gives_the_same_tokens(hub_dir, torch_tts, attention):
    """The one-query attentions `choose_step` times on a GPU (those that run on a CPU: two batched
    products around a float32 softmax, and SDPA held to its math kernel) give the plain backend's greedy
    tokens, over padded rows and carried coarse windows."""
    tts = cuda_on_cpu(hub_dir, rows=4, attention=attention)
    got = tts.generate(TEXTS, max_semantic_tokens=48, **GREEDY)
    want = torch_tts.generate(TEXTS, max_semantic_tokens=48, **GREEDY)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.semantic_tokens, w.semantic_tokens)
        np.testing.assert_array_equal(g.fine_tokens, w.fine_tokens)
    assert tts.semantic_model.decoder.attention == attention


def test_a_named_whole_sequence_kernel_keeps_the_backends_decoder(hub_dir):
    """attention="math" (one SDPA kernel for prefills and fine passes) swaps that kernel only: the CUDA
    backend's decoder stays (it once fell back to the plain blocks, 5x slower on a GPU)."""
    options = EngineOptions(attention="math")
    parts = load_parts(hub_dir, torch.device("cpu"), torch.float32)
    tts = fastbark.Bark(parts, options, backend=CudaBackend(options, graphs=False))
    for model in (tts.semantic_model, tts.coarse_model):
        assert isinstance(model.decoder, StaticDecoder)
    assert tts.backend.models["semantic"].whole_attention == "math"
    assert tts.backend.models["semantic"].decode_step == "static"
    assert isinstance(tts.fine_model.passes, CapturedPasses)  # the fine model's passes stay too
    assert tts.backend.models["fine"].window_passes == "whole" and "window passes whole" in str(tts.backend)


def test_fine_passes_compute_the_whole_window_and_slice_the_start(torch_tts):
    """A text's fine pass runs over every position (one CUDA graph per codebook serves every start) and
    the start is cut after: the logits the model gives for that start."""
    model = torch_tts.fine_model
    passes = CapturedPasses(model, graphs=False)
    codes = torch.randint(0, 1024, (1, 1024, 8), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for start in (0, 256, 1000):
            got, want = passes(codes, 3, start), model(codes, 3, start)
            assert got.shape == want.shape == (1, 1024 - start, want.shape[-1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert passes.check() is None  # nothing captured, nothing to check


def test_fine_passes_that_cannot_be_captured_say_why(torch_tts):
    """On a machine where a pass cannot be captured (here: no CUDA), the check names the failure, keeps no
    graph, and the backend then runs the passes uncaptured."""
    passes = CapturedPasses(torch_tts.fine_model, graphs=True)
    why = passes.check()
    assert why and why.split(":")[0].endswith("Error") and passes._graphs == {}


def test_the_step_compiles_as_one_graph_and_gives_the_same_tokens(torch_tts):
    """torch.compile(token_step, fullgraph=True): no graph break, hence no host sync inside the step; the
    same greedy tokens as the plain step."""
    torch._dynamo.reset()
    model = torch_tts.semantic_model
    ids = [torch_tts.tokenize(t) for t in TEXTS[:2]]
    options = SemanticOptions(temperature=0, min_eos_p=None, max_tokens=12)
    want = generate_semantic(model, ids, None, options)
    decoder = StaticDecoder(model, graphs=False, compile=True, rows=2)  # torch.compile(token_step, fullgraph=True)
    model.use_kernels(model.layers[0].attn.kernel, model.decode_step, decoder)
    try:
        got = generate_semantic(model, ids, None, options)
    finally:
        model.use_kernels(model.layers[0].attn.kernel, model.decode_step)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert decoder.kind == "static+compiled"


def test_the_compiled_step_writes_its_cache_in_place():
    """torch.compile turns a write into a view of an input cache (`index_copy_` into kv[i]) into a pass over
    every layer's whole cache (its generated code): 4.0 ms a step on an H200 against 0.62 ms uncompiled,
    and here 41.8 ms on the 64 MB cache against 0.63 ms on the 1 MB one. The compiled step's write
    (`index_put_` into the whole cache) costs the same on the 64x longer cache, writes position pos only,
    and gives the uncompiled step's logits."""
    import time
    from fastbark.backends.cuda import decoder as d
    torch._dynamo.reset()
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, input_vocab_size=32, output_vocab_size=32, block_size=512,
                       bias=True)
    torch.manual_seed(0)
    model = CausalGPT(config).eval()
    fn = d.write_by_index_put
    step = torch.compile(d.token_step, fullgraph=True, dynamic=True)
    token, pos = torch.tensor([3, 4]), torch.tensor([7])
    seconds = {}
    with torch.inference_mode():
        for max_len in (512, 32_768):  # (n_layer, 2, R, H, max_len, hd) float32: 1 MB or 64 MB
            kv = torch.zeros(2, 2, 2, 2, max_len, 32)
            want = d.token_step(model, token, pos, kv.clone(), 128, d.attend_sdpa, fn)
            torch.testing.assert_close(step(model, token, pos, kv, 128, d.attend_sdpa, fn), want)  # compiled here
            assert kv[..., 7, :].abs().sum(-1).gt(0).all() and kv[..., 8:, :].abs().sum() == 0  # at pos only
            best = float("inf")
            for _ in range(7):
                start = time.perf_counter()
                step(model, token, pos, kv, 128, d.attend_sdpa, fn)
                best = min(best, time.perf_counter() - start)
            seconds[max_len] = best
    ratio = seconds[32_768] / seconds[512]
    assert ratio < 2.5, seconds  # a pass over the whole cache would make it ~10x


def test_cuda_backend_and_compile_options_are_checked(capsys):
    with pytest.raises(BadInput, match="backend cuda runs on a CUDA GPU, not on device 'cpu'"):
        EngineOptions(backend="cuda")
    with pytest.raises(BadInput, match="compile fuses the CUDA backend's decode step: it needs device cuda"):
        EngineOptions(compile=True)
    with pytest.raises(BadInput, match="compile must be true or false"):
        EngineOptions(compile="yes")
    from fastbark.cli import main
    assert main(["say", "hi", "--compile", "-o", "x.wav"]) == 2
    assert capsys.readouterr().err.startswith("fastbark: error: --compile fuses")


def test_a_step_that_cannot_be_captured_runs_uncaptured_and_says_why(hub_dir):
    """CUDA graphs are checked once on a tiny model; where capture fails (here: no CUDA at all) the steps run
    uncaptured, with the reason in the report, never a crash in the middle of a generation."""
    parts = load_parts(hub_dir, torch.device("cpu"), torch.float32)
    options = EngineOptions()
    tts = fastbark.Bark(parts, options, backend=CudaBackend(options, graphs=True))
    (fallback,) = tts.backend.fallbacks
    assert fallback.startswith("CUDA graphs: RuntimeError") and "launched kernel by kernel" in fallback
    assert tts.backend.models["semantic"].decode_step == "static"
    out = tts.generate("the dog is cute", max_semantic_tokens=8, **GREEDY)
    assert len(out.semantic_tokens) == 8


class HostReads:
    """Counts the ops that make the host wait for the device on a GPU: reading a value (`.item()`, `bool()`,
    `int()`), `nonzero` (its size is data) and copies to the CPU (`.cpu()`)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                reads = (torch.ops.aten._local_scalar_dense, torch.ops.aten.item, torch.ops.aten.is_nonzero,
                         torch.ops.aten.nonzero)
                to_cpu = func.overloadpacket in (torch.ops.aten.to, torch.ops.aten._to_copy) and \
                    str((kwargs or {}).get("device")) == "cpu"
                counter.reads += func.overloadpacket in reads or to_cpu
                return func(*args, **(kwargs or {}))
        self.reads, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def test_no_host_reads_inside_the_decode_loop(static_tts):
    """The steps between two reads of the end flags make the host wait for nothing: 64 sampled steps read
    values at the 8 checks only (three reads each: the flags copied, all, any)."""
    ids = [static_tts.tokenize(t) for t in TEXTS]
    options = SemanticOptions(temperature=0.7, max_tokens=64, min_eos_p=0.2)
    model = static_tts.semantic_model
    with HostReads() as every_step:
        generate_semantic(model, ids, None, options, [Stream(i) for i in range(3)], check_every=1)
    with HostReads() as every_8:
        generate_semantic(model, ids, None, options, [Stream(i) for i in range(3)], check_every=8)
    # outside the loop: the prompt's two copies in, the prefill's check, the results' copies out; a row leaving
    assert every_step.reads >= 3 * 64 and every_8.reads <= 3 * 64 // 8 + 6
    token = torch.tensor([1, 2, 3])
    with torch.inference_mode(), HostReads() as steps:
        cache = model.new_cache(3)
        for pos in range(100, 140):  # across a KEY_BUCKET boundary: another attended length, still no read
            model.decode(token, cache, pos)
    assert steps.reads == 0


def test_the_codec_decodes_with_deterministic_cudnn_on_cuda_only(static_tts, monkeypatch):
    """EnCodec's transposed convolutions run cuDNN's backward-data algorithms, some of which add with
    atomics in any order: on CUDA the decoder runs with cuDNN held to deterministic algorithms (and no
    benchmarking), and the settings come back after; elsewhere nothing changes."""
    from fastbark.backends.cuda import deterministic_convolutions
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    with deterministic_convolutions(torch.device("cuda")):
        assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
    assert (cudnn.deterministic, cudnn.benchmark) == before
    with deterministic_convolutions(torch.device("cpu")):
        assert (cudnn.deterministic, cudnn.benchmark) == before
    seen = []
    codec = static_tts.codec
    monkeypatch.setattr(type(static_tts), "device", property(lambda self: torch.device("cuda")))
    original = type(codec).forward
    monkeypatch.setattr(type(codec), "forward", lambda self, codes: seen.append(cudnn.deterministic) or
                        original(self, codes))
    static_tts.decode(np.zeros((8, 4), dtype=np.int64))
    assert seen == [True] and cudnn.deterministic == before[0]


def test_prefills_that_cannot_be_captured_keep_the_steps_graphs(monkeypatch):
    """Prefill capture is checked apart from the steps': where only the prefills fail, they run kernel by
    kernel and say why, and nothing else changes; offload never captures them."""
    import fastbark.backends.cuda as cuda
    calls = []

    def fails(device, dtype, compile, tiles=None, prefills=False):
        calls.append(prefills)
        return "RuntimeError: no capture" if prefills else None
    monkeypatch.setattr(cuda, "capture_fails", fails)
    backend = CudaBackend(EngineOptions(), graphs=True)
    assert backend.prefill_graphs(True) == (False, "prefills as CUDA graphs: RuntimeError: no capture; "
                                                   "prefills launched kernel by kernel")
    assert backend.prefill_graphs(False) == (False, None) and calls == [True]
    monkeypatch.setattr(cuda, "capture_fails", lambda *a, **k: None)
    assert backend.prefill_graphs(True) == (True, None)
    backend.options = types.SimpleNamespace(offload=True)  # (EngineOptions refuses offload without CUDA)
    assert backend.prefill_graphs(True) == (False, None)
