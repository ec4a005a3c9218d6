"""The CUDA backend (`backend="auto"` on a CUDA device, or `backend="cuda"`).

- `decoder.py`: the semantic and coarse GPTs' cache work through the `Decoder` seam: static KV caches
  padded to 16 rows, prefills one row at a time, and a decode step from token ids to logits with the
  position as a device tensor, captured as one CUDA graph per (cache, attended length) and replayed;
  with `compile=True` the step is `torch.compile(fullgraph=True)`'d first (fused elementwise kernels).
  Capture (and compilation) is checked once per device and dtype on a tiny model (`capture_fails`):
  where it fails, the steps run uncaptured (or uncompiled) and the report says why.
- prefills, one row at a time (a row's numbers must not depend on its batch): each into a one-row scratch
  cache, replayed from one CUDA graph per prompt length, then copied into its row (not with offload).
- `passes.py`: the fine stage's passes, one text at a time, replayed from one CUDA graph per codebook
  (checked against the uncaptured pass on the real model when the backend is prepared; not with offload).
- whole-sequence attention (prefills, fine passes): SDPA, which picks FlashAttention-2, cuDNN or the
  memory-efficient kernel for the dtype and shapes; the report names its choice (`sdpa_choice`).
- the decode step: where graphs are captured (not compiled, not offloaded), `token_step` with each of
  `decoder.ATTENTIONS` (SDPA as dispatched, held to its efficient, cuDNN or math kernel, or two batched
  products) and, in half precision, the fused Triton kernels of `fused.py` with each of their tiles, are
  timed in a captured step of the real model, and the fastest kept (`choose_step`; the report lists the
  times). With offload the models are in CPU memory when the backend is prepared: the fused step runs
  where it can (its caches hold only the batch's rows), else `token_step` with SDPA.
- half precision: float16 and bfloat16 weights and caches; LayerNorm statistics and the softmax of
  attention are float32 inside torch's CUDA kernels, and sampling tempers and filters the logits in float32.
- `offload.py`: CPU offload (`offload=True`): each GPT on the GPU for its stage only.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend

from ...models.gpt import AttentionKernel
from ..base import Backend, Models
from ..cpu.choice import ChoiceCache
from ..cpu.library import cache_dir
from ...constants import FINE_WINDOW, MAX_TEXT_TOKENS
from .decoder import DECODE_ROWS, KEY_BUCKET, StaticDecoder, capture_fails, choose_step, step_candidates
from .passes import CapturedPasses

PROMPT = MAX_TEXT_TOKENS + 1  # the semantic prompt: 256 text positions and the infer token

SDPA_NAMES = {SDPBackend.MATH: "math", SDPBackend.FLASH_ATTENTION: "flash",
              SDPBackend.EFFICIENT_ATTENTION: "efficient", SDPBackend.CUDNN_ATTENTION: "cudnn"}


def sdpa_choice(device: torch.device, dtype: torch.dtype, n_head: int, head_dim: int, queries: int, keys: int,
                causal: bool = False, masked: bool = False) -> str:
    """Which kernel SDPA runs for `queries` queries of (1, n_head, ., head_dim) against `keys` keys of this
    dtype on this device (causal, or with a boolean mask over the keys), as torch's own dispatcher chooses
    it (`torch._fused_sdp_choice`); "sdpa" where this torch cannot say."""
    q = torch.zeros(1, n_head, queries, head_dim, device=device, dtype=dtype)
    k = torch.zeros(1, n_head, keys, head_dim, device=device, dtype=dtype)
    mask = torch.ones(1, 1, 1, keys, dtype=torch.bool, device=device) if masked else None
    try:
        choice = SDPBackend(torch._fused_sdp_choice(q, k, k, mask, 0.0, causal))
    except (AttributeError, IndexError, RuntimeError, TypeError, ValueError):
        return "sdpa"
    return f"sdpa-{SDPA_NAMES.get(choice, choice.name.lower())}"


@contextlib.contextmanager
def deterministic_convolutions(device: torch.device) -> Iterator[None]:
    """A context in which cuDNN picks deterministic convolution algorithms on a CUDA device (nothing
    elsewhere): a transposed convolution, as in EnCodec's decoder, runs cuDNN's backward-data algorithms,
    some of which add with atomics in any order, so the same codes could give audio that differs in its
    last bits from one call to the next. Only `deterministic` and `benchmark` change, and come back after."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def gpu_key(device: torch.device) -> list[str]:
    """What a measured step choice depends on: the GPU, torch, CUDA, Triton, and this backend's code."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "no triton"
    name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    code = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(Path(__file__).parent.glob("*.py"))))
    return ["cuda", name, str(capability), torch.__version__, str(torch.version.cuda), triton_version,
            code.hexdigest()[:16]]


class ReportedSdpa(AttentionKernel):
    """The models' own SDPA, with the kernel torch's dispatcher picks for them named in the report."""

    def __init__(self, whole_kind: str, one_query_kind: str):
        self.whole_kind, self.one_query_kind = whole_kind, one_query_kind


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, options, graphs: bool | None = None, choice_cache: ChoiceCache | None = None):
        """`graphs`: capture the decode steps as CUDA graphs (default: on a CUDA device). The tests run the
        backend on the CPU with `graphs=False`: the same step, uncaptured. `choice_cache`: where the measured
        step choices are kept (default: beside the CPU backend's, one file per GPU and software)."""
        super().__init__(options)
        self.graphs = options.torch_device.type == "cuda" if graphs is None else graphs
        self._choice_cache = choice_cache

    def choice_cache(self) -> ChoiceCache:
        if self._choice_cache is None:
            self._choice_cache = ChoiceCache(cache_dir(), gpu_key(self.options.torch_device))
        return self._choice_cache

    def prepare(self, models: Models) -> list[str]:
        o, fallbacks = self.options, []
        graphs, compile = self.graphs, o.compile
        if graphs:  # checked once on a tiny model: a step that cannot be captured runs uncaptured, and says why
            failure = capture_fails(o.torch_device, o.torch_dtype, compile)
            if failure and compile:
                fallbacks.append(f"compiled decode step: {failure}; the step uncompiled")
                compile, failure = False, capture_fails(o.torch_device, o.torch_dtype, False)
            if failure:
                fallbacks.append(f"CUDA graphs: {failure}; decode steps launched kernel by kernel")
                graphs = False
        prefill_graphs, failure = self.prefill_graphs(graphs)
        if failure:
            fallbacks.append(failure)
        for model in models:
            c = model.config
            shape = (o.torch_device, o.torch_dtype, c.n_head, c.n_embd // c.n_head)
            if model is models.fine:  # 1024-frame non-causal passes, one text at a time: captured as graphs
                passes = CapturedPasses(model, graphs=graphs and not o.offload)
                failure = passes.check()
                if failure:
                    fallbacks.append(f"fine passes as CUDA graphs: {failure}; the passes launched kernel by kernel")
                    passes = CapturedPasses(model, graphs=False)
                model.use_kernels(ReportedSdpa(sdpa_choice(*shape, FINE_WINDOW, FINE_WINDOW), ""), passes)
                continue
            # prefills: causal over a prompt (257 positions for the semantic stage); steps: one query, masked keys
            one_query, keywords = "masked " + sdpa_choice(*shape, 1, KEY_BUCKET, masked=True), {}
            on_gpu = model.position_embeds_layer.weight.device.type == "cuda"  # with offload: in CPU memory now
            if graphs and not compile and on_gpu:  # each candidate step timed captured; the fastest kept
                name, keywords, times = choose_step(model, self.choice_cache())
                self.choices.append(f"{model.config.n_layer} layers x {c.n_embd} decode step: {name} ({times})")
                one_query = name if name != "sdpa" else one_query
            elif graphs and not compile:  # offload: the fused step, whose caches hold only the batch's rows
                keywords, why_not = self.offload_step(model)
                if why_not:
                    fallbacks.append(f"offload, {why_not}; the torch step, caches of {DECODE_ROWS} rows")
                else:
                    one_query = keywords["tiles"].name
            attention = ReportedSdpa(sdpa_choice(*shape, PROMPT, PROMPT, causal=True), one_query)
            model.use_kernels(attention, None, StaticDecoder(model, graphs=graphs, compile=compile,
                                                              scratch_prefills=prefill_graphs, **keywords))
        return fallbacks

    def prefill_graphs(self, graphs: bool) -> tuple[bool, str | None]:
        """Whether prefills are captured as CUDA graphs, and the fallback taken if they cannot be. Checked apart
        from the steps (a prefill that cannot be captured must not cost the steps their graphs); not with
        offload, which moves the models every generation, so that no graph would be replayed."""
        if not graphs or self.options.offload:
            return False, None
        failure = capture_fails(self.options.torch_device, self.options.torch_dtype, False, prefills=True)
        if failure:
            return False, f"prefills as CUDA graphs: {failure}; prefills launched kernel by kernel"
        return True, None

    def offload_step(self, model) -> tuple[dict, str | None]:
        """With offload the models are in CPU memory now, so no step can be timed on them: the fused Triton
        step (fused.py) with its first tiles, where it runs here (checked on a tiny model). Its caches hold
        a batch's rows rounded up to a power of two, where the torch step's hold 16 (0.6 GB for bark-small's
        1024 positions, against its 0.4 GB of weights): offload is for memory."""
        candidates, why_not = step_candidates(model)
        tiles = next((k["tiles"] for k in candidates.values() if "tiles" in k), None)
        if tiles is None:
            return {}, why_not
        failure = capture_fails(self.options.torch_device, self.options.torch_dtype, False, tiles)
        return ({}, f"fused Triton step: {failure}") if failure else ({"tiles": tiles}, None)
