"""The CUDA backend's decoder: static KV caches, and a decode step from token ids to logits that reads its
position from a device tensor, so that one CUDA graph replays it at every position.

`token_step` is the whole step as one pure function of tensors (gpt-fast's `decode_one_token`): the token
and position embeddings, every block (the new keys and values written together into the cache at `pos`:
one `index_copy_` where captured, one `index_put_` where compiled), and the head. Nothing in it depends
on a host value but the cache length it attends to, `n_keys` (the position rounded up to `KEY_BUCKET`;
later keys are masked), so one graph serves `KEY_BUCKET` positions and a stage needs at most
1024 / 128 = 8 graphs per cache.

`StaticDecoder` (a `models.gpt.Decoder`) owns the caches ("slabs"): each is allocated once for a number of
rows (`rows_for`: a multiple of `rows` for `token_step`, a power of two for the fused step of `fused.py`)
and reused by later generations, so a graph captured over it stays valid. The pipeline sees a view of its
first B rows; the padding rows run too (garbage in, garbage out, never read), which is what makes a row's
numbers independent of its companions in `token_step`: every decode step of a batch of up to `rows` texts
is the same GEMM shape. Prefills run one row at a time for the same reason
(cuBLAS may pick another kernel for another number of rows).

On the CPU (`graphs=False`) the same function runs eagerly: the tests prove every line of it there, and
`torch.compile(token_step, fullgraph=True)` proves it has no graph break (so no host sync).
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...models.gpt import CausalGPT, GPTConfig, KVCache
from ..cpu.choice import STEP_LABEL, Choice, ChoiceCache

if TYPE_CHECKING:
    from .fused import Tiles

KEY_BUCKET = 128  # a step attends to the cache's first n_keys positions, n_keys = position + 1 rounded up to this
DECODE_ROWS = 16  # decode steps run on a multiple of this many rows: batches up to 16 are one GEMM shape


def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One query per row over n keys: q (R, H, 1, hd), k and v (R, H, n, hd), bias (1, 1, 1, n) additive (0 for
    the keys written so far, -inf after) -> (R, H, 1, hd), on the kernel SDPA's dispatcher picks."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def attend_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same attention as two batched products around a float32 softmax (no fused kernel)."""
    scores = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1])) + bias  # (R, H, 1, n)
    return scores.softmax(-1).to(v.dtype) @ v  # (R, H, 1, n) @ (R, H, n, hd) -> (R, H, 1, hd)


def sdpa_with(backend: SDPBackend) -> Callable:
    """SDPA held to one of its kernels (where that kernel cannot take the inputs, the call fails)."""
    def attend(q, k, v, bias):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attend


# The step's one-query attentions, by the name the report gives; on a GPU `choose_step` times each
# captured step and keeps the fastest (kernels per call and their fixed costs, not bytes, set a decode
# step's time at these sizes).
ATTENTIONS: dict[str, Callable] = {
    "sdpa": attend_sdpa,
    "sdpa-efficient": sdpa_with(SDPBackend.EFFICIENT_ATTENTION),
    "sdpa-cudnn": sdpa_with(SDPBackend.CUDNN_ATTENTION),
    "sdpa-math": sdpa_with(SDPBackend.MATH),
    "matmul": attend_matmul,
}


def write_by_index_copy(kv: torch.Tensor, i: int, pos: torch.Tensor, kv_new: torch.Tensor) -> None:
    """Layer i's new keys and values kv_new (2, R, H, 1, hd) into the cache kv (n_layer, 2, R, H, max_len, hd)
    at pos: one kernel for both, through layer i's view (the captured steps)."""
    kv[i].index_copy_(3, pos, kv_new)  # kv[i]: (2, R, H, max_len, hd), position pos


def write_by_index_put(kv: torch.Tensor, i: int, pos: torch.Tensor, kv_new: torch.Tensor) -> None:
    """The same write as one `index_put_` with an index tensor for every dimension but the last, into the
    whole cache, not into a view of it: torch.compile then writes those entries in place. Through a view,
    its code passes over every layer's whole cache each step (4.0 ms a step against 0.62 ms on an H200)."""
    L, _, R, H = kv.shape[:4]
    layer = torch.arange(L, device=kv.device)[i].view(1, 1, 1)  # (1, 1, 1), broadcast over (2, R, H)
    which = torch.arange(2, device=kv.device).view(2, 1, 1)  # keys, values
    rows = torch.arange(R, device=kv.device).view(1, R, 1)
    heads = torch.arange(H, device=kv.device).view(1, 1, H)
    kv.index_put_((layer, which, rows, heads, pos.view(1, 1, 1)), kv_new[:, :, :, 0])  # values (2, R, H, hd)


def token_step(model: CausalGPT, token: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor, n_keys: int,
               attend: Callable = attend_sdpa, write: Callable = write_by_index_copy) -> torch.Tensor:
    """token (R,) int64 at position pos ((1,) int64, on the device) -> next logits (R, V). Writes the new keys
    and values at pos into the cache kv (n_layer, 2, R, H, max_len, hd; keys at [:, 0], values at [:, 1])
    with `write`; attends to the first n_keys positions, those after pos masked out (one additive mask for
    every layer)."""
    config = model.config
    R, C, H = token.shape[0], config.n_embd, config.n_head
    x = (model.input_embeds_layer(token) + model.position_embeds_layer(pos))[:, None]  # (R, C) -> (R, 1, C)
    keys = torch.arange(n_keys, device=token.device)
    bias = torch.zeros(1, 1, 1, n_keys, dtype=x.dtype, device=x.device).masked_fill(keys > pos, float("-inf"))
    for i, block in enumerate(model.layers):
        qkv = block.attn.att_proj(block.layernorm_1(x))  # (R, 1, 3C)
        qkv = qkv.view(R, 1, 3, H, C // H).permute(2, 0, 3, 1, 4)  # (R, 1, 3C) -> (3, R, H, 1, hd)
        write(kv, i, pos, qkv[1:])  # the new keys and values, (2, R, H, 1, hd)
        y = attend(qkv[0], kv[i, 0, :, :, :n_keys], kv[i, 1, :, :, :n_keys], bias)  # (R, H, 1, hd)
        x = x + block.attn.out_proj(y.transpose(1, 2).reshape(R, 1, C))  # (R, H, 1, hd) -> (R, 1, C)
        x = x + block.mlp(block.layernorm_2(x))
    return model.lm_head(model.layernorm_final(x[:, 0]))  # (R, V)


class Slab:
    """One static cache and the step's static inputs: keys and values in one tensor kv (n_layer, 2, rows, H,
    max_len, hd), so that a step writes both with one kernel, and k and v its views (n_layer, rows, H,
    max_len, hd); the tokens (rows,) and the position (1,); and the graphs captured over them, by n_keys."""

    def __init__(self, model: CausalGPT, rows: int, max_len: int):
        c, w = model.config, model.position_embeds_layer.weight
        shape = (c.n_layer, 2, rows, c.n_head, max_len, c.n_embd // c.n_head)
        self.rows, self.max_len = rows, max_len
        self.kv = torch.zeros(shape, device=w.device, dtype=w.dtype)
        self.k, self.v = self.kv[:, 0], self.kv[:, 1]  # (n_layer, rows, H, max_len, hd) each
        self.token = torch.zeros(rows, dtype=torch.long, device=w.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=w.device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # by `runner`'s key
        self.users: weakref.WeakSet[StaticCache] = weakref.WeakSet()  # the caches viewing it; free when none

    def view(self, batch: int) -> "StaticCache":
        cache = StaticCache(self.k[:, :batch], self.v[:, :batch], slab=self)  # (n_layer, batch, H, max_len, hd)
        self.users.add(cache)
        return cache


@dataclass(eq=False)
class StaticCache(KVCache):
    """A KVCache that is the first rows of a slab: rows leave by moving the others up, in place."""

    slab: Slab | None = None
    __hash__ = object.__hash__  # by identity: a slab keeps a weak set of its views

    def select(self, rows: torch.Tensor) -> "StaticCache":
        n = len(rows)
        self.slab.k[:, :n] = self.slab.k[:, rows]  # the gather copies first: safe where source and target overlap
        self.slab.v[:, :n] = self.slab.v[:, rows]
        return self.slab.view(n)


def capture(fn: Callable[[], torch.Tensor], device: torch.device,
            pool: tuple | None = None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A CUDA graph of `fn` (which reads and writes only static tensors) and its static output. `fn` runs
    twice first on a side stream (cuBLAS handles, workspaces, a compiled step's tuning), which is harmless:
    a step writes the same keys at the same position each time it runs. `pool`: another graph's memory
    pool to share (graphs replayed one after another, whose outputs are copied before the next runs)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class StaticDecoder:
    """A `models.gpt.Decoder` for one causal GPT: static caches, prefills one row at a time, and the decode
    step as `token_step`, replayed from a CUDA graph per (cache, n_keys) where `graphs`, compiled with
    `torch.compile(fullgraph=True)` where `compile`."""

    def __init__(self, model: CausalGPT, *, graphs: bool, compile: bool = False, rows: int = DECODE_ROWS,
                 attention: str = "sdpa", tiles: "Tiles | None" = None, scratch_prefills: bool = False):
        """`tiles`: the step as fused Triton kernels with these block sizes (`fused.py`) in place of
        `token_step` (then `attention` and `compile` are unused). `scratch_prefills`: each row's prefill
        runs into a one-row scratch cache, then is copied into its row (`prefill`): captured as one CUDA
        graph per prompt length where `graphs`."""
        self.model, self.graphs, self.rows, self.attention, self.tiles = model, graphs, rows, attention, tiles
        self.scratch_prefills = scratch_prefills
        self._scratch: dict[int, Slab] = {}  # one-row caches by length, for the prefills
        self._prefills: dict[tuple[int, int], tuple] = {}  # (T, max_len) -> the input, replay (or None), output
        self._pool = None  # the prefill graphs' shared memory pool (they run one after another)
        self.kind = ("cuda-graph" if graphs else "static") + (
            "+triton" if tiles is not None else "+compiled" if compile else "")
        self._step = torch.compile(token_step, fullgraph=True, dynamic=True) if compile else token_step
        if tiles is not None:
            from .fused import token_step as fused_step  # Triton: imported where it is chosen
            self._fused_step = fused_step
        self._attend = ATTENTIONS[attention]
        self._write = write_by_index_put if compile else write_by_index_copy  # see write_by_index_put
        self._slabs: list[Slab] = []
        self._weights: tuple[int, ...] = ()  # the parameters' addresses when the graphs were captured

    def new_cache(self, batch: int, max_len: int) -> StaticCache:
        self._check_weights()
        rows = self.rows_for(batch)
        slab = next((s for s in self._slabs if s.rows == rows and s.max_len == max_len and not s.users), None)
        if slab is None:
            slab = Slab(self.model, rows, max_len)
            self._slabs.append(slab)
        return slab.view(batch)

    def rows_for(self, batch: int) -> int:
        """The rows a batch's steps run: `token_step` pads to a multiple of `rows` (one GEMM shape for every
        batch up to it), the fused kernels to a power of two (a row's bits do not depend on the others), so
        a slab holds only the rows a batch needs (for one text: 1 row, not 16)."""
        if self.tiles is not None:
            return 1 << (batch - 1).bit_length()
        return math.ceil(batch / self.rows) * self.rows

    def release(self) -> None:
        """Drop the slabs no cache views, and their graphs. Offload calls it when the model leaves the device:
        a slab (16 rows x 1024 positions: 0.6 GB for bark-small in half precision, 1.6 GB for bark) would
        otherwise stay on the GPU beside the next stage's model, and its graphs read weights that moved."""
        self._slabs = [s for s in self._slabs if s.users]
        self._prefills.clear()  # the scratch caches and their graphs
        self._scratch.clear()
        self._pool = None

    def _check_weights(self) -> None:
        """A graph reads the parameters at their addresses when it was captured: if they have moved (offload
        brings a model back to new memory for each stage), the graphs are captured again."""
        weights = tuple(p.data_ptr() for p in self.model.parameters())
        if weights != self._weights:
            for slab in self._slabs:
                slab.graphs.clear()
            self._prefills.clear()
            self._pool = None
            self._weights = weights

    def prefill(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One row at a time: a row's prefill is then the same computation whatever its batch."""
        if self.scratch_prefills and isinstance(cache, StaticCache):
            rows = [self._prefill_row(embeds[b: b + 1], cache, b) for b in range(embeds.shape[0])]
        else:
            rows = [self.model(embeds[b: b + 1], KVCache(cache.k[:, b: b + 1], cache.v[:, b: b + 1]), 0)
                    for b in range(embeds.shape[0])]  # each (1, V)
        return torch.cat(rows)  # (B, V)

    def _prefill_row(self, embeds: torch.Tensor, cache: "StaticCache", b: int) -> torch.Tensor:
        """embeds (1, T, C) into a one-row scratch cache of the slab's length (its graph, per T, replayed
        where `graphs`), then its T positions copied into row b of the cache -> the logits (1, V). At a
        batch of 16, one-row prefills launched kernel by kernel cost about what the decode steps cost."""
        T, max_len = embeds.shape[1], cache.slab.max_len
        if max_len not in self._scratch:
            self._scratch[max_len] = Slab(self.model, 1, max_len)
        scratch = self._scratch[max_len]
        if (T, max_len) not in self._prefills:
            static = embeds.clone()

            def run() -> torch.Tensor:
                return self.model(static, KVCache(scratch.k, scratch.v), 0)  # (1, V)
            if self.graphs:
                graph, out = capture(run, embeds.device, self._pool)
                self._pool = self._pool or graph.pool()
                self._prefills[T, max_len] = static, graph.replay, out
            else:
                self._prefills[T, max_len] = static, None, run
        static, replay, out = self._prefills[T, max_len]
        static.copy_(embeds)
        if replay is not None:
            replay()
            logits = out.clone()  # overwritten by the next replay
        else:
            logits = out()
        cache.slab.kv[:, :, b, :, :T] = scratch.kv[:, :, 0, :, :T]  # (n_layer, 2, H, T, hd): row b of the view
        return logits

    def runner(self, slab: Slab, batch: int, pos: int) -> tuple[tuple[int, int], Callable[[], torch.Tensor]]:
        """The step of `batch` rows at `pos` over `slab`, as a function of the slab's static tensors, and the key
        of its graph: (rows run, keys attended). `token_step` runs every row of the slab and attends to
        n_keys, the position rounded up to KEY_BUCKET. The fused kernels run the batch's rows rounded up to
        a power of two (a row's bits do not depend on how many run) and read the position themselves, so
        one graph serves every position."""
        if self.tiles is not None:
            rows = min(slab.rows, self.rows_for(batch))
            return (rows, slab.max_len), lambda: self._fused_step(self.model, slab.token[:rows], slab.pos, slab.kv,
                                                                  self.tiles)
        n_keys = min(slab.max_len, math.ceil((pos + 1) / KEY_BUCKET) * KEY_BUCKET)
        return (slab.rows, n_keys), lambda: self._step(self.model, slab.token, slab.pos, slab.kv, n_keys,
                                                       self._attend, self._write)

    def step(self, token: torch.Tensor, cache: StaticCache, pos: int) -> torch.Tensor:
        slab, batch = cache.slab, token.shape[0]
        slab.token[:batch].copy_(token)  # device to device, no host sync
        slab.pos.fill_(pos)  # a kernel with the value as its argument, no copy from the host
        key, run = self.runner(slab, batch, pos)
        if not self.graphs:
            return run()[:batch]
        if key not in slab.graphs:
            slab.graphs[key] = capture(run, slab.kv.device)
        graph, out = slab.graphs[key]
        graph.replay()
        return out[:batch].clone()  # the graph's output is overwritten by its next replay


def time_step(decoder: StaticDecoder, n_keys: int, batch: int, replays: int = 30) -> tuple[float, torch.Tensor]:
    """Milliseconds per captured decode step of `batch` rows attending to n_keys keys (the median of 3 rounds
    of `replays` replays, timed with CUDA events), and the step's logits (batch, V). The cache holds the same
    random numbers for every decoder (seeded), and the step runs 64 positions before the end of its keys, so
    a way that attended to the masked keys would give other logits."""
    model, device = decoder.model, decoder.model.position_embeds_layer.weight.device
    cache = decoder.new_cache(batch, model.config.block_size)
    generator = torch.Generator(device).manual_seed(0)
    cache.slab.kv.normal_(generator=generator)
    token = torch.arange(batch, device=device)
    logits = decoder.step(token, cache, n_keys - 64)  # captured here
    key, _ = decoder.runner(cache.slab, batch, n_keys - 64)
    graph, _ = cache.slab.graphs[key]
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return sorted(times)[1], logits


def step_candidates(model: CausalGPT) -> tuple[dict[str, dict], str | None]:
    """The decode steps `choose_step` times, by name, as StaticDecoder's keywords: `token_step` with each of
    ATTENTIONS, and in half precision the fused Triton kernels with each of their `TILES`; and why the fused
    kernels are not among them, if they are not."""
    candidates: dict[str, dict] = {name: {"attention": name} for name in ATTENTIONS}
    if model.position_embeds_layer.weight.dtype not in (torch.float16, torch.bfloat16):
        return candidates, "fused Triton step: half precision only"
    try:
        from . import fused
    except ImportError as e:  # a torch build without Triton
        return candidates, f"fused Triton step: {e}"
    why = fused.supports(model)
    if why:
        return candidates, f"fused Triton step: {why}"
    candidates.update({tiles.name: {"tiles": tiles} for tiles in fused.TILES})
    return candidates, None


def choose_step(model: CausalGPT, cache: ChoiceCache | None = None) -> tuple[str, dict, str]:
    """The fastest captured decode step for this model (on a GPU) among `step_candidates`: each is timed at
    the cache's full length for one row and for `DECODE_ROWS` rows, and the least sum of the two wins (a
    row's bits must not depend on its batch, so one step serves every batch). Returns its name, its
    StaticDecoder keywords, and what was measured, for the report. A step that cannot run, or gives logits
    other than the first candidate's (SDPA as dispatched) on the same cache, is left out. With `cache`
    (kept per GPU, torch, CUDA, Triton and this backend's code), a shape measured before is not measured
    again: each candidate is captured and replayed 180 times, for every engine made."""
    c = model.config
    key = f"decode step {c.n_layer}x{c.n_embd}x{c.output_vocab_size} {model.position_embeds_layer.weight.dtype}"
    n_keys, times, failed = c.block_size, {}, {}
    candidates, why_not = step_candidates(model)
    earlier = cache.get(key) if cache is not None else None
    if earlier is not None and earlier.chosen in candidates:
        measured = ", ".join(f"{n} {ms:.3f} ms" for n, ms in sorted(earlier.ms.items(), key=lambda kv: kv[1]))
        return earlier.chosen, candidates[earlier.chosen], f"measured earlier on this GPU, ms at 1 + {DECODE_ROWS} " \
            f"rows: {measured}"
    with torch.inference_mode():
        reference = None
        for name, keywords in candidates.items():
            decoder = None
            try:
                decoder = StaticDecoder(model, graphs=True, **keywords)
                one, _ = time_step(decoder, n_keys, 1)
                full, logits = time_step(decoder, n_keys, DECODE_ROWS)
                times[name] = (one, full)
                logits = logits.float()
                if reference is None:
                    reference = logits
                elif not torch.allclose(logits, reference, rtol=0.05, atol=0.05):
                    failed[name] = f"logits differ by {(logits - reference).abs().max().item():.3g}"
                    del times[name]
            except Exception as e:  # noqa: BLE001 - a kernel this GPU, dtype or torch lacks: not a candidate
                times.pop(name, None)
                failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
            finally:
                decoder = None
                torch.cuda.empty_cache()
    notes = [f"{n} refused ({why})" for n, why in failed.items()] + ([why_not] if why_not else [])
    if not times:
        return "sdpa", candidates["sdpa"], "; ".join(["none could be timed"] + notes)
    best = min(times, key=lambda n: sum(times[n]))
    if cache is not None:
        cache.put(key, Choice((c.n_layer, c.n_embd, c.output_vocab_size), best,
                              {n: sum(t) for n, t in times.items()}, failed, STEP_LABEL))
    measured = ", ".join(f"{n} {one:.3f}/{full:.3f} ms" for n, (one, full)
                         in sorted(times.items(), key=lambda kv: sum(kv[1])))
    return best, candidates[best], "; ".join([f"ms at 1/{DECODE_ROWS} rows: {measured}"] + notes)


@functools.cache
def capture_fails(device: torch.device, dtype: torch.dtype, compile: bool, tiles: "Tiles | None" = None,
                  prefills: bool = False) -> str | None:
    """Why the decode step cannot be captured (and compiled, if `compile`; as the fused kernels, if `tiles`;
    with its prefills captured too, if `prefills`) on this device in this dtype, or None where it can: a tiny
    random model's captured prefill and steps must give the logits of the uncaptured ones. Checked once per
    set of arguments, as the CPU backend checks its C kernels."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=64, input_vocab_size=32, output_vocab_size=32, block_size=256,
                       bias=True)
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():  # the user's RNG must not move
            torch.manual_seed(0)
            model = CausalGPT(config).eval().to(device, dtype)
            logits = []
            for graphs in (False, True):
                decoder = StaticDecoder(model, graphs=graphs, compile=compile and graphs, rows=2,
                                        tiles=tiles if graphs else None, scratch_prefills=graphs and prefills)
                cache = decoder.new_cache(2, config.block_size)
                first = decoder.prefill(model.input_embeds_layer(torch.arange(10, device=device).view(2, 5)), cache)
                token = torch.tensor([3, 4], device=device)
                steps = [decoder.step(token, cache, pos) for pos in (5, 6, 130)]
                logits.append(torch.stack([first] + steps).float())  # (4, 2, V)
            if not torch.allclose(logits[0], logits[1], rtol=0.02, atol=0.02):
                return "its logits differ from the uncaptured step's"
    except Exception as e:  # noqa: BLE001 - any failure means: run the steps uncaptured, and say why
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return None
