"""Kernels chosen by measuring this machine, not by guessing from its instruction-set flags.

For each shape of a decode step's linear layers (the products that run once per generated token), every
candidate kernel is first checked, then timed, and the fastest that passed runs:
- **checked**: a candidate must give each row the same bits alone as inside a batch (fastbark's float32
  batch invariance), called as in a decode step (B, 1, K) and as at a head (B, K); the same bits with one
  thread as with all of them; and values within float32 rounding of a float64 product. A candidate that fails is never used, whatever its speed.
- **timed**: batches of 1 and 8 rows (a lone text, and a served batch), median of enough runs to fill
  a few milliseconds each, on the layer's own weights, evicted from the caches before every run (as in a
  decode step, which reads hundreds of MB of weights); the score is the sum.

A kernel that loses to plain torch (`F.linear`, always a candidate) is therefore never chosen. Then, where a
decode step in one C call exists (decode_step.py), the whole step is timed both ways, that call against the
blocks with their chosen products, and the faster runs (`choose_step`). The same holds for the fast modes'
whole-sequence attention: the bfloat16 C kernel runs only where it measured faster than SDPA in the mode's
dtype (`choose_whole_attention`), the int8 mode's big products take torch._int_mm or exact float32 GEMMs,
whichever measured faster (`choose_int_route`), and the bfloat16 mode's take bfloat16 GEMMs or float32 GEMMs over
the same values (`choose_half_route`); on CPUs with AMX, the fine GPT's products in both modes also have fastbark's
own kernel on the tiles (amx.py) among their candidates. The measurements are cached per CPU (model name and flags),
torch version, thread count and kernel sources, beside the C library's build, so they are made once per machine;
the backend report lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

BATCHES = (1, 8)  # rows per decode step: a lone text, and a served batch
CHECK_ROWS = (16, 3, 2)  # batch invariance is checked in batches of these sizes (16: the most a slab holds)
TIME_BUDGET_S = 0.004  # per candidate and batch: enough timed runs to fill this, at least 5
MIN_RUNS = 5


class PlainLinear(nn.Module):
    """nn.Linear's own forward (F.linear), as a candidate like the others."""

    kind = "torch"

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class Candidate:
    name: str
    make: Callable[[nn.Linear], nn.Module | None]  # None: not available here


@dataclass(frozen=True)
class Choice:
    """What was measured for one shape (in -> out features), and what was chosen."""

    shape: tuple[int, ...]  # (in, out) features; a decode step: (layers, width, vocabulary)
    chosen: str
    ms: dict  # candidate -> milliseconds for BATCHES rows, summed
    refused: dict  # candidate -> why it was not eligible
    label: str = ""  # what kind of product, when not a decode step's ("int8 products ")

    def __str__(self) -> str:
        times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in sorted(self.ms.items(), key=lambda kv: kv[1]))
        refused = "".join(f"; {name} refused: {why}" for name, why in self.refused.items())
        what = f"{self.shape[0]} layers x {self.shape[1]} -> {self.shape[2]}" if self.label == STEP_LABEL else \
            f"{self.shape[0]} heads x {self.shape[1]}" if self.label == ATTENTION_LABEL else \
            f"{self.shape[0]} -> {self.shape[1]}" if self.shape else ""  # no shape: a build parameter (tuning.py)
        return f"{self.label}{what}: {self.chosen} ({times}{refused})"


def check(module: nn.Module, linear: nn.Linear) -> str:
    """'' if `module` keeps float32's promises for `linear`'s product, else why not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(CHECK_ROWS[0], 1, linear.in_features, generator=g)  # (B, 1, K): one position per row
    with torch.inference_mode():
        batch = module(x)
        alone = torch.cat([module(x[i: i + 1]) for i in range(x.shape[0])])
        for rows in CHECK_ROWS:
            if not torch.equal(module(x[:rows]), alone[:rows]):
                return f"a row alone differs from the same row in a batch of {rows}"
            if not torch.equal(module(x[:rows, 0]), alone[:rows, 0]):  # (B, K): how a head is called
                return f"a head's row alone differs from the same row at a head in a batch of {rows}"
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
            try:
                one = module(x)
            finally:
                torch.set_num_threads(threads)
            if not torch.equal(one, batch):
                return "one thread gives other bits than several"
        want = F.linear(x.double(), linear.weight.double(), None if linear.bias is None else linear.bias.double())
        scale = float(x.abs().max() * linear.weight.abs().max() * linear.in_features)
        if not bool(((batch.double() - want).abs() <= 1e-5 * scale).all()):
            return "its values are wrong"
    return ""


def last_level_cache_bytes() -> int:
    """The largest CPU cache (Linux sysfs); 32 MB where it cannot be read."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text().strip()
            sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
        except (OSError, ValueError):
            continue
    return max(sizes, default=32 << 20)


# A VM may report its host's whole last-level cache (480 MB seen on a 2-core Xeon VM), most of it other tenants'.
# Reading more than this between two timed runs only makes the measurement slower: it is about bark-small's whole
# float32 decode step (~370 MB), all that a decode step reads between two uses of a layer's weights.
EVICT_BYTES_MAX = 384 << 20


def eviction_bytes() -> int:
    """Bytes to read between timed runs so that a layer's weights come from memory: twice the last-level cache,
    at most EVICT_BYTES_MAX."""
    return min(2 * last_level_cache_bytes(), EVICT_BYTES_MAX)


class ColdCache:
    """Reading a buffer of eviction_bytes() evicts a layer's weights: in a decode step every layer's
    weights come from memory (a step reads hundreds of MB), so a product timed with its weights in the cache
    would measure the wrong thing. The buffer is made at the first eviction."""

    def __init__(self):
        self._buffer = None

    def __call__(self) -> None:
        if self._buffer is None:
            self._buffer = torch.ones(eviction_bytes() // 4)
        self._buffer.sum()


def median_ms(fn: Callable[[], object], min_runs: int = MIN_RUNS, before: Callable[[], None] = lambda: None) -> float:
    """The median time of fn() over at least `min_runs` runs and TIME_BUDGET_S, `before()` run untimed first."""
    with torch.inference_mode():
        times, start = [], time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < TIME_BUDGET_S:
            before()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def milliseconds(module: nn.Module, in_features: int, rows: int, evict: Callable[[], None]) -> float:
    x = torch.randn(rows, 1, in_features)
    with torch.inference_mode():
        module(x)  # warm up (first-call set-up)
    return median_ms(lambda: module(x), before=evict)


def choose(linear: nn.Linear, candidates: list[Candidate], evict: Callable[[], None] | None = None
           ) -> tuple[Choice, dict[str, nn.Module]]:
    """Check and time each candidate on `linear`, its weights evicted from the caches before each run (`evict`,
    default ColdCache()); (the choice, the modules made for it)."""
    evict = evict or ColdCache()
    made, ms, refused = {}, {}, {}
    for c in candidates:
        try:
            module = c.make(linear)
        except (RuntimeError, NotImplementedError, OSError) as e:
            module, why = None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        else:
            why = "not available here"
        if module is None:
            refused[c.name] = why
            continue
        why = check(module, linear)
        if why:
            refused[c.name] = why
            continue
        made[c.name] = module
        ms[c.name] = sum(milliseconds(module, linear.in_features, rows, evict) for rows in BATCHES)
    if not ms:
        raise RuntimeError(f"no kernel passed its checks for {linear.in_features} -> {linear.out_features}: "
                           f"{refused}")
    chosen = min(ms, key=ms.get)
    return Choice((linear.in_features, linear.out_features), chosen, ms, refused), made


class ChoiceCache:
    """Choices kept in a JSON file per machine, torch, thread count and kernel sources."""

    def __init__(self, folder: Path, key_parts: list[str]):
        key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:16]
        self.path = folder / f"choices-{key}.json"
        try:
            data = json.loads(self.path.read_text())
            self._choices = {k: Choice(tuple(v["shape"]), v["chosen"], v["ms"], v["refused"], v.get("label", ""))
                             for k, v in data.items()}
        except (OSError, ValueError, KeyError, TypeError):
            self._choices = {}

    def get(self, name: str) -> Choice | None:
        return self._choices.get(name)

    def put(self, name: str, choice: Choice) -> None:
        self._choices[name] = choice
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({k: asdict(v) for k, v in self._choices.items()}, indent=1))
            os.replace(tmp, self.path)  # atomic: another process never reads half a file
        except OSError:
            pass  # a read-only cache only costs the measurement again next time


def code_digest() -> str:
    """The CPU backend's Python code, hashed: how it calls the kernels is part of what was measured."""
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()[:16]


def cpu_identity(cpuinfo: str | None = None) -> tuple[str, str]:
    """(the CPU's model, its instruction-set flags) from /proc/cpuinfo (or its text): x86's `model name` and
    `flags`, or 64-bit ARM's `CPU implementer` and `CPU part` and its `Features`; where there is no such file,
    the platform's processor name and ''."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # "key\t: value"; the first processor's lines are enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    arm = " ".join(fields[k] for k in ("CPU implementer", "CPU part") if fields.get(k))
    return fields.get("model name") or arm or platform.processor() or platform.machine(), \
        fields.get("flags") or fields.get("Features", "")


def machine_key(extra: list[str]) -> list[str]:
    """What a measurement depends on: the CPU, torch, the threads, the kernels' sources (`extra`)."""
    model, flags = cpu_identity()
    return [model, flags, torch.__version__, str(torch.get_num_threads()), *extra]


def choose_linears(model: nn.Module, candidates: list[Candidate], cache: ChoiceCache | None,
                   replaced: dict | None = None) -> list[Choice]:
    """Swap every linear layer of the decode-step GPT `model` for the kernel measured fastest for its shape;
    the choices, one per shape. "plain" keeps the nn.Linear as it is. `replaced` (if given) gets each new
    module -> the nn.Linear it replaced."""
    by_shape: dict[tuple[int, int, bool], Choice] = {}
    names = [c.name for c in candidates]
    evict = ColdCache()  # one eviction buffer for every shape

    def swap(linear: nn.Linear) -> nn.Module | None:
        shape = (linear.in_features, linear.out_features, linear.bias is not None)
        made: dict[str, nn.Module] = {}
        if shape not in by_shape:
            key = f"{shape[0]}x{shape[1]}{'+bias' if shape[2] else ''}:{','.join(names)}"
            cached = cache.get(key) if cache is not None else None
            if cached is not None and cached.chosen in names:
                by_shape[shape] = cached
            else:
                by_shape[shape], made = choose(linear, candidates, evict)  # on this layer's own weights
                if cache is not None:
                    cache.put(key, by_shape[shape])
        chosen = by_shape[shape].chosen
        module = made.get(chosen) or next(c for c in candidates if c.name == chosen).make(linear)
        if module is None:  # a cached choice this layer cannot have after all: measure it here
            by_shape[shape], made = choose(linear, candidates, evict)
            module = made[by_shape[shape].chosen]
        if type(module) is PlainLinear:
            return None  # plain: the nn.Linear stays
        if replaced is not None:
            replaced[module] = linear
        return module
    model.swap_linears(swap)
    return list(by_shape.values())


# ---------------------------------------------------------------- the decode step: one C call, or the blocks

STEP_LABEL = "decode step "
STEP_ROWS = (1, 8)  # a lone text, and a batch of 8 (as BATCHES)
STEP_POSITIONS = 256  # cached positions a timed step attends over: a coarse window's prompt, a semantic prompt's
STEP_RUNS = 3  # timed steps per way, rows and round (a step takes 5-80 ms: the budget alone would run it once)
STEP_ROUNDS = 2  # the ways are timed in turn, twice over, and each keeps its best round: a slow spell of a shared
# machine during one way's turn does not decide alone


def step_key(model, mode: str) -> str:
    c = model.config
    return f"step {c.n_layer}x{c.n_embd}x{c.n_head}x{c.output_vocab_size} {mode}"


def filled_cache(model, rows: int):
    """A KV cache of `rows` rows holding STEP_POSITIONS positions of any finite keys and values (the time does
    not depend on them)."""
    with torch.inference_mode():
        cache = model.new_cache(rows, STEP_POSITIONS + 1)
        for t in (cache.k, cache.v):
            t.random_(-127, 128) if t.dtype == torch.int8 else t.normal_()  # an int8 cache: any integers, and scales
        for t in (cache.k_scale, cache.v_scale):
            if t is not None:
                t.fill_(0.01)
    return cache


def step_ms(model, cache) -> float:
    """The median time of model.decode for the cache's rows at position STEP_POSITIONS (logits included)."""
    with torch.inference_mode():
        token = torch.zeros(cache.k.shape[1], dtype=torch.long, device=cache.k.device)  # (B,): one token a row
        model.decode(token, cache, STEP_POSITIONS)  # warm up (first-call set-up)
        return median_ms(lambda: model.decode(token, cache, STEP_POSITIONS), min_runs=STEP_RUNS)


def choose_step(model, ways: dict[str, Callable[[], None]], key: str, cache: ChoiceCache | None) -> Choice:
    """Install each way of running `model`'s decode steps in turn (ways[name]() installs it), time a whole
    step per text (at each of STEP_ROWS rows, divided by the rows, summed: a lone text weighs as much as a
    text in a batch of 8; the best of STEP_ROUNDS turns), and leave the fastest installed. Cached under
    `key`."""
    c = model.config
    shape = (c.n_layer, c.n_embd, c.output_vocab_size)
    cached = cache.get(key) if cache is not None else None
    if cached is not None and cached.chosen in ways and cached.shape == shape:
        ways[cached.chosen]()
        return cached
    caches = {rows: filled_cache(model, rows) for rows in STEP_ROWS}  # made once, for every way and round
    ms: dict[str, float] = {}
    for _ in range(STEP_ROUNDS):
        for name, install in ways.items():
            install()
            per_text = sum(step_ms(model, cache) / rows for rows, cache in caches.items())  # alone, and in a batch
            ms[name] = min(ms.get(name, float("inf")), per_text)
    result = Choice(shape, min(ms, key=ms.get), ms, {}, STEP_LABEL)
    ways[result.chosen]()
    if cache is not None:
        cache.put(key, result)
    return result


# ---------------------------------------------------------------- int8's big products

LONG_ROWS = 64  # rows timed for a prefill or fine-pass product: enough to be compute-bound, quick to time
# rows timed for the int4 mode's fine-pass routes, which run nowhere else: each route expands the int4 weight at every
# call, a cost that 64 rows would weigh 16 times too heavily against a 1024-frame pass
FINE_ROWS = 1024


def choose_route(key: str, shape: tuple[int, int], label: str, inputs: tuple[torch.Tensor, ...],
                 routes: dict[str, Callable], cache: ChoiceCache | None, same_bits: bool) -> Choice:
    """Which of `routes` (name -> f(*inputs)) computes a long product fastest here (cached under `key`). With
    `same_bits`, a route must give the first route's bits (the reference) to be eligible; without, its values
    within 1% of the reference's largest (routes that sum in another order)."""
    cached = cache.get(key) if cache is not None else None
    if cached is not None and cached.chosen in routes:
        return cached
    reference, ms, refused = None, {}, {}
    for name, route in routes.items():
        try:
            out = route(*inputs)
        except (RuntimeError, NotImplementedError) as e:
            refused[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            continue
        reference = out if reference is None else reference
        if same_bits and not torch.equal(out, reference):
            refused[name] = "other bits than the reference product"
            continue
        if not same_bits and not (out - reference).abs().max() <= 0.01 * reference.abs().max():
            refused[name] = "other values than the reference product"
            continue
        ms[name] = median_ms(lambda: route(*inputs), min_runs=3)
    if not ms:
        raise RuntimeError(f"no {label.strip()} route worked for {shape[0]} -> {shape[1]}: {refused}")
    result = Choice(shape, min(ms, key=ms.get), ms, refused, label)
    if cache is not None:
        cache.put(key, result)
    return result


def choose_int_route(in_features: int, out_features: int, routes: dict[str, Callable], cache: ChoiceCache | None
                     ) -> Choice:
    """Which exact int8 x int8 -> int32 product (`routes`: name -> f(x_q (M, K), w_q (N, K))) is fastest here for
    a layer's shape. Every route must give the first route's bits (the reference) to be eligible."""
    g = torch.Generator().manual_seed(0)
    x_q = torch.randint(-127, 128, (LONG_ROWS, in_features), dtype=torch.int8, generator=g)
    w_q = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=g)
    return choose_route(f"int8 {in_features}x{out_features}:{','.join(routes)}", (in_features, out_features),
                        "int8 products ", (x_q, w_q), routes, cache, same_bits=True)


def choose_half_route(in_features: int, out_features: int, routes: dict[str, Callable], cache: ChoiceCache | None
                      ) -> Choice:
    """Which bfloat16 product (`routes`: name -> f(x (M, K), w (N, K)), both bfloat16) is fastest here for a layer's
    shape: bfloat16 GEMMs, fast on CPUs with bfloat16 arithmetic (AMX, AVX512-BF16), or float32 GEMMs over the same
    values. Their sums differ in order only, so values within 1% of the first route's are eligible."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(LONG_ROWS, in_features, generator=g).to(torch.bfloat16)
    w = (torch.randn(out_features, in_features, generator=g) * in_features ** -0.5).to(torch.bfloat16)
    return choose_route(f"bfloat16 {in_features}x{out_features}:{','.join(routes)}", (in_features, out_features),
                        "bfloat16 products ", (x, w), routes, cache, same_bits=False)


def choose_int4_route(in_features: int, out_features: int, routes: dict[str, Callable], cache: ChoiceCache | None,
                      prefill: bool = False) -> Choice:
    """Which product (`routes`: name -> f(x (M, K) float32 holding int8 values, w (N, K) float32 int4 weights
    expanded)) runs the int4 mode's long products fastest here for a layer's shape: float32 GEMMs (the reference),
    bfloat16 GEMMs over the same values rounded once, or those on AMX tiles (int4.py): the fine passes' routes, or
    with `prefill` the prefills' (int4.int4_routes; reported as "int4 prefill products"). Values within 1% of the
    reference's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (FINE_ROWS, in_features), generator=g).float()
    q = torch.randint(-8, 8, (out_features, in_features), generator=g)
    q[:, ::32] = -8  # each group of 32 holds its -8 level: grouping it again (the tiles' route) gives the same values
    label = "int4 prefill products " if prefill else "int4 products "
    return choose_route(f"int4 {in_features}x{out_features}:{','.join(routes)}", (in_features, out_features),
                        label, (x, q.float() * 1e-3), routes, cache, same_bits=False)


# ---------------------------------------------------------------- whole-sequence attention

ATTENTION_SHAPES = ((1024, False), (887, True))  # a fine pass's window; a coarse window's longest prefill (causal)
ATTENTION_LABEL = "whole-sequence attention "


def choose_whole_attention(n_head: int, n_embd: int, dtype: torch.dtype, ways: dict[str, Callable],
                           cache: ChoiceCache | None) -> Choice:
    """Which whole-sequence attention (`ways`: name -> f(qkv (B, T, 3C), n_head, causal) -> (B, T, C), or None
    where it cannot run) is fastest here for one text, in the activations' dtype: the time of a fine pass's
    window and of a coarse prefill's, summed. Every way must give values close to the first's (the reference:
    SDPA), and each row of a batch the bits it has alone, to be eligible. Cached per shape and dtype."""
    key = f"attention {n_head}x{n_embd} {str(dtype).removeprefix('torch.')}:{','.join(ways)}"
    cached = cache.get(key) if cache is not None else None
    if cached is not None and cached.chosen in ways:
        return cached
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(1, T, 3 * n_embd, generator=g).to(dtype), causal) for T, causal in ATTENTION_SHAPES]
    rows = torch.randn(3, 70, 3 * n_embd, generator=g).to(dtype)  # batch invariance: each row alone as in the batch
    reference, ms, refused = None, {}, {}
    with torch.inference_mode():
        for name, way in ways.items():
            try:
                out = [way(qkv, n_head, causal) for qkv, causal in inputs]
            except (RuntimeError, NotImplementedError) as e:
                refused[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                continue
            if any(o is None for o in out):
                refused[name] = "cannot run this shape"
                continue
            reference = out if reference is None else reference
            if not all(torch.allclose(o.float(), r.float(), rtol=0.05, atol=0.05) for o, r in zip(out, reference)):
                refused[name] = "its values are far from the reference's"
                continue
            batch = way(rows, n_head, True)  # (3, T, C): a prefill of 3 texts
            if batch is None or not all(torch.equal(way(rows[i: i + 1], n_head, True), batch[i: i + 1])
                                        for i in range(rows.shape[0])):
                refused[name] = "a row alone differs from the same row in a batch"
                continue
            ms[name] = sum(median_ms(lambda: way(qkv, n_head, causal), min_runs=3) for qkv, causal in inputs)
    if not ms:
        raise RuntimeError(f"no whole-sequence attention worked for {n_head} heads x {n_embd}: {refused}")
    result = Choice((n_head, n_embd), min(ms, key=ms.get), ms, refused, ATTENTION_LABEL)
    if cache is not None:
        cache.put(key, result)
    return result
