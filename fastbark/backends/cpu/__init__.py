"""The CPU backend: fastbark's C kernels (native/, built at first use by library.py), oneDNN-packed and
int8 linear layers, the fast modes' one-call decode step and bfloat16 attention.

What it chooses, per engine options (each choice falls back, and says so in the report):
- the C library itself: built once per machine with the prefetch distances and register blocks that measured
  fastest there (tuning.py; every build gives the same bits);
- exact float32: the decode steps' linear layers on whichever of the C kernel, oneDNN-packed weights
  and plain `F.linear` passed its checks and measured fastest on this machine, per shape (`cpu_kernel`
  "auto"; choice.py), or the one `cpu_kernel` names ("c", "onednn", "plain"); then the whole decode
  step as one C call (C products) or as those blocks, whichever measured faster ("auto"; "c": the call);
- int8 (`quantize="int8"`): every linear layer of the three GPTs in int8 (C products where the
  kernels are built); the semantic and coarse decode steps as one C call each, where that measured
  faster than the blocks; the big products (prefills, fine passes) on torch._int_mm, exact float32
  GEMMs or AMX tiles (the fine GPT's weights packed for them, the prefills' used as they lie), whichever
  measured faster per shape;
- int4 (`quantize="int4"`): every linear layer of the three GPTs' blocks with int4 weights in groups of 32
  (int4.py; C products for one position per row), the heads in int8 as above; the decode steps as one C
  call each where that measured faster; the fine passes' products as float32 or bfloat16 GEMMs or on AMX tiles,
  the prefills' on oneDNN's float32 GEMMs or AMX tiles, whichever measured faster per shape ("auto");
- int8 and int4 with the one-call step: the semantic and coarse KV caches in int8 (a scale per position and head),
  rounded in C where the kernels are built;
- bfloat16: the decode steps as one C call each (AVX512-BF16) where that measured faster than the blocks on
  oneDNN-packed weights ("auto"; "c": always), the heads oneDNN-packed; the long products (prefills, fine passes)
  as bfloat16 GEMMs, as float32 GEMMs over the same values or on AMX tiles, whichever measured faster per shape
  ("auto");
- the MLP's GELU in the pass that finishes its first product where that layer offers it (int8 with the C kernels,
  bfloat16 on AMX tiles: native/gelu.h's, the one-call step's);
- the fast modes: whole-sequence attention with bfloat16 products in C (on AMX tiles or AVX512-BF16), SDPA, or (int8,
  int4: float32 activations) SDPA over bfloat16 q, k, v, whichever measured fastest ("auto"; "c": a C kernel wherever
  one runs);
- half precision: a decode step's attention over the cache as two matmuls.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...models.gpt import CausalGPT
from ..base import Backend, Models
from .attention import CpuAttention, amx_attention, bf16_attention, sdpa_bf16_whole, sdpa_whole
from .decode_step import fused_decode_step
from .int4 import Int4Linear, int4_kernel, int4_routes
from .amx import BF16_PLAIN_ROUTE, BF16_ROUTE, KIND_BF16, KIND_S8, AmxBf16Linear, amx_kernels, plain_runs
from .int8 import Int8Linear, int8_kernels, int_routes, quantize_rows_native
from .choice import (Candidate, ChoiceCache, PlainLinear, choose_half_route, choose_int4_route, choose_int_route,
                     choose_linears, choose_step, choose_whole_attention, code_digest, machine_key, step_key)
from .library import cache_dir, has_vnni, kernels_unavailable, load_kernels, sources_digest
from .linears import HALF_ROUTES, Bf16ViaFloat32Linear, GemvLinear, PackedLinear, pack_linear, packing_available


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, options, choice_cache: ChoiceCache | None = None):
        super().__init__(options)
        self._choice_cache = choice_cache

    def choice_cache(self) -> ChoiceCache:
        """Measurements kept per machine, beside the C library (its sources, and the Python code that calls the
        kernels, are part of the key: a change to either can change what is fastest)."""
        if self._choice_cache is None:
            self._choice_cache = ChoiceCache(cache_dir(), machine_key([sources_digest(), code_digest()]))
        return self._choice_cache

    def prepare(self, models: Models) -> list[str]:
        o, dtype = self.options, self.options.torch_dtype
        use_c = o.cpu_kernel in ("auto", "c")  # fastbark's C kernels may be used
        kernels = load_kernels() if use_c else None
        fallbacks = [f"C kernels: {kernels_unavailable()}"] if use_c and kernels is None else []
        self.choices += list(kernels.tuning) if kernels else []  # the library's build parameters (tuning.py)
        fast = o.quantize is not None or dtype == torch.bfloat16  # the fast modes
        whole_kind, whole, why = self._whole_attention(models, kernels) if fast else ("sdpa", None, "")
        fallbacks += [why] if why else []
        attention = CpuAttention(whole, half_matmul=dtype != torch.float32, whole_kind=whole_kind)
        if o.quantize is not None:
            fallbacks += self._quantise(models, kernels)
        elif dtype == torch.bfloat16 and o.cpu_kernel == "auto":
            fallbacks += self._bfloat16_products(models)
        for model in (models.semantic, models.coarse):  # the decode-step GPTs; the fine GPT runs big GEMMs
            step = fused_decode_step(model) if fast and kernels else None
            if fast and kernels and step is None:
                fallbacks.append(f"one-call decode step: not available for {o.dtype}"
                                 f"{' ' + o.quantize if o.quantize else ''} on this CPU; block by block instead")
            if o.quantize is not None:
                if step is not None and o.cpu_kernel == "auto":  # the same quantised layers either way
                    step = self._measured_step(model, attention, step, f"{o.quantize} {o.dtype}")
            elif dtype == torch.float32 and (o.cpu_kernel == "auto" or (o.cpu_kernel == "c" and kernels)):
                step = self._float32_step(model, attention, kernels)
            else:
                fallbacks += self._decode_linears(model, dtype, head_only=step is not None)
                if step is not None and dtype == torch.bfloat16 and o.cpu_kernel == "auto":
                    step = self._bfloat16_step(model, attention, step)
            # the quantised modes' one-call step reads its KV cache in int8, a scale per position and head: a quarter
            # of float32's bytes for a step's attention (bfloat16 before, RESULTS.md sections 44, 57), an error below
            # the int8 products' own (fidelity.py)
            int8_cache = o.quantize is not None and step is not None
            model.use_kernels(attention, step, cache_dtype=torch.int8 if int8_cache else None,
                              cache_quantize=quantize_rows_native if int8_cache and int8_kernels() else None)
        models.fine.use_kernels(attention)
        return list(dict.fromkeys(fallbacks))  # the same fallback once, not per model

    def _quantise(self, models: Models, kernels) -> list[str]:
        """int8: every linear layer of the three GPTs in int8; int4: the blocks' in int4, the heads in int8."""
        o, fallbacks = self.options, []
        routes: dict = {}  # the big int8 products' routes measured fastest here (_route)
        long_routes: dict = {}  # the int4 long products' routes (fine passes, prefills)

        def int8_linear(linear, one_text: bool, head: bool):
            """Any layer may take the AMX tiles (amx.py): the fine GPT's (`one_text`) over a packed copy of the weight,
            the others' (prefills) over the plain weight their one-call step reads where its shape suits the tiles; not
            a decode stage's `head`, which only ever reads one position a row."""
            if o.cpu_kernel == "plain":
                return Int8Linear(linear, native=kernels is not None)
            tiles = kernels is not None and o.cpu_kernel == "auto" and (one_text or (
                not head and plain_runs(linear.out_features, linear.in_features, KIND_S8)))
            return Int8Linear(linear, native=kernels is not None, route=self._route(
                routes, choose_int_route, linear, int_routes(amx=tiles, plain=not one_text)))

        def int4_route(linear, one_text: bool) -> str:
            """How the int4 products of this shape run: the fine GPT's as float32 or bfloat16 GEMMs, the prefills' as
            oneDNN's float32 GEMMs; either on AMX tiles where there are some."""
            routes = int4_routes(amx=kernels is not None, one_text=one_text)
            if o.cpu_kernel != "auto" or len(routes) == 1:
                return "float32"
            return self._route(long_routes, functools.partial(choose_int4_route, prefill=not one_text), linear, routes)
        for model in models:
            # int4: every layer of the blocks; the heads, whose errors go straight into the logits, stay int8
            heads = [model.lm_head] if isinstance(model, CausalGPT) else list(model.lm_heads)
            one_text = not isinstance(model, CausalGPT)  # the fine GPT: one text per pass (pipeline/fine.py)
            model.swap_linears(lambda linear: int8_linear(linear, one_text, any(linear is h for h in heads))
                               if o.quantize == "int8" or any(linear is h for h in heads) else
                               Int4Linear(linear, native=kernels is not None, one_text=one_text,
                                          route=int4_route(linear, one_text)))
        if kernels and int8_kernels() is None:
            fallbacks.append("int8 C kernels: failed their check; int8 products in torch")
        if kernels and o.quantize == "int4" and int4_kernel() is None:
            fallbacks.append("int4 C kernel: failed its check; int4 products in torch")
        if any(c.chosen == "via-float" for c in routes.values()):  # torch._int_mm measured slower here
            slower = [f"{c.shape[0]} -> {c.shape[1]}" for c in routes.values() if c.chosen == "via-float"]
            why = "" if has_vnni() else " (no VNNI)"
            fallbacks.append(f"int8 products: torch._int_mm measured slower on this CPU{why} for {', '.join(slower)};"
                             " those prefills and fine passes run as float32 GEMMs whose integer results are exact "
                             "(the same bits)")
        return fallbacks

    def _bfloat16_products(self, models: Models) -> list[str]:
        """bfloat16: each layer shape's long products (prefills, fine passes) as bfloat16 GEMMs or as float32 GEMMs
        over the same values, whichever measured faster here (choice.py); the layers keep their bfloat16 weights."""
        routes: dict = {}  # the routes measured fastest here (_route)
        amx = amx_kernels()

        def swapped(linear, one_text: bool, head: bool):
            """Any layer may take the AMX tiles (amx.py): the fine GPT's (`one_text`) over a packed copy of the weight,
            the others' (prefills) over the plain weight their one-call step reads where its shape suits the tiles; not
            a decode stage's `head`, which only ever reads one position a row (and is packed for oneDNN)."""
            prefill = not head and plain_runs(linear.out_features, linear.in_features, KIND_BF16)
            tiles = {} if amx is None else {"amx": BF16_ROUTE} if one_text else \
                {"amx-plain": BF16_PLAIN_ROUTE} if prefill else {}
            chosen = self._route(routes, choose_half_route, linear, {**HALF_ROUTES, **tiles})
            return Bf16ViaFloat32Linear(linear) if chosen == "via-float32" else \
                AmxBf16Linear(linear, amx, plain=chosen == "amx-plain") if chosen.startswith("amx") else None
        for model in models:
            one_text = not isinstance(model, CausalGPT)  # the fine GPT: one text per pass (pipeline/fine.py)
            model.swap_linears(lambda linear: swapped(linear, one_text, not one_text and linear is model.lm_head))
        if any(c.chosen == "via-float32" for c in routes.values()):
            return ["bfloat16 products: bfloat16 GEMMs are slower on this CPU (no bfloat16 arithmetic); prefills and "
                    "fine passes run as float32 GEMMs over the same values"]
        return []

    def _route(self, measured: dict, choose, linear, candidates: dict) -> str:
        """The name of the route among `candidates` that `choose` (a choice.py chooser) measured fastest here for the
        layer's shape: measured once per shape and set of candidates (kept in `measured`), and reported."""
        shape = (linear.in_features, linear.out_features)
        key = (*shape, *candidates)
        if key not in measured:
            measured[key] = choose(*shape, candidates, self.choice_cache())
            self.choices.append(measured[key])
        return measured[key].chosen

    def _whole_attention(self, models: Models, kernels) -> tuple[str, object, str]:
        """The fast modes' whole-sequence attention: (its name, the way or None for SDPA, a fallback line or ''). The
        C kernels (on AMX tiles "amx", on AVX512-BF16 "bf16-c"), SDPA, and where the activations are float32 (int8,
        int4) SDPA over bfloat16 q, k, v: with "auto" whichever measured fastest at the fine GPT's shape (choice.py),
        with "c" a C kernel wherever one runs (the tiles first), with "plain" SDPA."""
        o = self.options
        kernel = bf16_attention() if kernels else None
        tiles = amx_attention() if kernels else None
        missing = "bfloat16 attention kernel: not on this CPU (needs AVX512-BF16); SDPA instead" \
            if kernels and kernel is None and tiles is None else ""
        c = models.fine.config
        c_ways = {name: way for name, way in (("amx", tiles), ("bf16-c", kernel))
                  if way is not None and way.runs(c.n_head, c.n_embd)}  # the tiles first
        if o.cpu_kernel != "auto":
            return next(iter(c_ways.items()), ("sdpa", None)) + (missing,)
        ways = {"sdpa": sdpa_whole, **c_ways, **({"sdpa-bf16": sdpa_bf16_whole} if o.torch_dtype == torch.float32 else {})}
        if len(ways) == 1:
            return "sdpa", None, missing
        choice = choose_whole_attention(c.n_head, c.n_embd, o.torch_dtype, ways, self.choice_cache())
        self.choices.append(choice)
        if choice.chosen == "sdpa":
            return "sdpa", None, "bfloat16 attention kernel: measured slower than SDPA here; SDPA instead" \
                if c_ways else missing
        return choice.chosen, ways[choice.chosen], ""

    def _measured_step(self, model, attention, step, mode: str, ways: dict | None = None):
        """`step` where a whole decode step through it measured faster than the blocks, else None. `ways`: how to
        install each (default: the same layers either way)."""
        ways = ways or {"fused-c": lambda: model.use_kernels(attention, step),
                        "blocks": lambda: model.use_kernels(attention, None)}
        choice = choose_step(model, ways, step_key(model, mode), self.choice_cache())
        self.choices.append(choice)
        return step if choice.chosen == "fused-c" else None

    def _bfloat16_step(self, model, attention, step):
        """bfloat16 with "auto": the one-call step (it reads the blocks' plain bfloat16 weights) or the blocks on
        oneDNN-packed weights where this CPU packs bfloat16 (else plain), whichever step measured faster per text;
        the head is packed either way (`_decode_linears`). On CPUs with AMX, oneDNN's blocks may be the faster; with
        them, the layers whose prefills took the tiles (AmxBf16Linear) are packed too, and prefill on oneDNN."""
        packs = packing_available(torch.bfloat16)
        packed: dict = {}  # plain layer -> its packed copy, made once
        plain: dict = {}  # packed copy -> the plain layer

        def to_packed(linear):
            if linear not in packed:
                packed[linear] = pack_linear(linear) if packs else None
                if packed[linear] is not None:
                    plain[packed[linear]] = linear
            return packed[linear]

        def fused():
            model.swap_linears(lambda m: plain.get(m), swapped=True)  # the plain weights back (the head stays packed)
            model.use_kernels(attention, step)

        def blocks():
            model.swap_linears(lambda m: to_packed(m) if isinstance(m, (nn.Linear, AmxBf16Linear)) else None,
                               swapped=True)
            model.use_kernels(attention, None)
        return self._measured_step(model, attention, step, "bfloat16", {"fused-c": fused, "blocks": blocks})

    def _float32_step(self, model, attention, kernels):
        """The exact mode with the C kernels: "c" swaps in GemvLinear and runs the one-call step where it works;
        "auto" chooses each shape's product by measurement, then the one-call step (its products: the C
        kernel's) or the blocks (theirs: the chosen ones), whichever step measured faster."""
        if self.options.cpu_kernel == "c":
            model.swap_linears(GemvLinear)
            return fused_decode_step(model)
        step = fused_decode_step(model) if kernels else None  # on the plain weights, before any layer is swapped
        candidates = [Candidate("c", GemvLinear)] if kernels else []  # what this machine has
        candidates += [Candidate("onednn", pack_linear)] if packing_available(torch.float32) else []
        candidates.append(Candidate("plain", PlainLinear))
        replaced: dict = {}
        self.choices += choose_linears(model, candidates, self.choice_cache(), replaced)
        if step is None or self._measured_step(model, attention, step, "float32") is None:
            return None
        # The step runs every decode step: the layers serve prefills only. Where oneDNN packed a layer (its plain
        # weight not kept), the step alone would still hold the plain weight: the layer takes it back, in GemvLinear.
        model.swap_linears(lambda m: GemvLinear(replaced[m]) if isinstance(m, PackedLinear) and m is not model.lm_head
                           else None, swapped=True)
        return fused_decode_step(model)  # on the weights the layers hold now

    def _decode_linears(self, model, dtype: torch.dtype, head_only: bool) -> list[str]:
        """The float linear layers of a decode-step GPT without C kernels, or with one `cpu_kernel` forced:
        oneDNN-packed, else plain. With a fused decode step only the head is swapped (the step reads the plain
        bfloat16 weights)."""
        if self.options.cpu_kernel == "plain":
            return []
        if not packing_available(dtype):
            return [] if dtype == torch.float16 else \
                [f"oneDNN packing: cannot pack {self.options.dtype} weights on this CPU; plain F.linear instead"]
        model.swap_linears(lambda linear: pack_linear(linear) if linear is model.lm_head or not head_only else None)
        return []
