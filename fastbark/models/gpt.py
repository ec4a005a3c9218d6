"""Bark's three GPTs: the causal one (semantic and coarse stages) and the non-causal fine one.

Module and parameter names follow the Hugging Face checkpoints (`input_embeds_layer`,
`layers.N.attn.att_proj`, ...), so a hub state dict loads without renaming.

Pure torch, no device branches. A backend (fastbark/backends/) may swap in its own code at these
typed seams, and only there:
- `AttentionKernel`: attention over a whole sequence, and one query over the KV cache;
- `DecodeStep`: every block of a causal GPT for one position per row;
- `Decoder`: the whole of a causal GPT's cache work (its caches, prefills and token steps from ids);
- `GPT.swap_linears`: the linear layers (any module with nn.Linear's forward; a `GeluLinear` also offers the MLP its
  first product with GELU applied in the same pass);
- `Quantizer`: how an int8 KV cache rounds what it stores (quantize_rows' bits, in a backend's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_positive_ints
from .quantize import quantize_rows


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    input_vocab_size: int
    output_vocab_size: int
    block_size: int = 1024
    bias: bool = False  # biases of the linear layers (and, in causal models, of the LayerNorms)
    n_codes_total: int = 8  # fine model only: codebooks embedded
    n_codes_given: int = 1  # fine model only: codebooks never predicted (lm_heads start after these)

    def __post_init__(self):
        check_positive_ints(self, ("n_layer", "n_head", "n_embd", "input_vocab_size", "output_vocab_size",
                                   "block_size", "n_codes_total", "n_codes_given"))
        if self.n_embd % self.n_head:
            raise ValueError(f"hidden size {self.n_embd} is not divisible by the {self.n_head} heads")


Quantizer = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]  # seam: quantize_rows, or the same bits


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: (layers, B, H, max_len, hd). In int8,
    each position's key and value of each head are rounded as quantize_rows does (by `quantize`: quantize_rows, or a
    backend's code with its bits), with their scales in k_scale and v_scale (layers, B, H, max_len): a quarter of
    float32's bytes for a step's attention to read."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    quantize: Quantizer = quantize_rows

    @classmethod
    def empty(cls, config: GPTConfig, batch: int, max_len: int, device, dtype,
              quantize: Quantizer | None = None) -> "KVCache":
        shape = (config.n_layer, batch, config.n_head, max_len, config.n_embd // config.n_head)
        scales = [torch.empty(shape[:-1], device=device, dtype=torch.float32) for _ in range(2)] \
            if dtype == torch.int8 else [None, None]
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype),
                   *scales, quantize or quantize_rows)

    def select(self, rows: torch.Tensor) -> "KVCache":
        """Keep only these batch rows (a copy; done when rows finish, not every step)."""
        return KVCache(*(t[:, rows] if t is not None else None for t in (self.k, self.v, self.k_scale, self.v_scale)),
                       self.quantize)

    def layer(self, i: int) -> "LayerCache":
        return LayerCache(*(t[i] if t is not None else None for t in (self.k, self.v, self.k_scale, self.v_scale)),
                          self.quantize)


class LayerCache(NamedTuple):
    """One layer's part of a KVCache: k, v (B, H, max_len, hd); in int8 also their scales (B, H, max_len)."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None
    quantize: Quantizer = quantize_rows

    def write(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, H, T, hd) at positions pos..pos+T-1 (rounded to the cache's dtype)."""
        T = k.shape[2]
        if self.k_scale is None:
            self.k[:, :, pos: pos + T], self.v[:, :, pos: pos + T] = k, v
            return
        for new, cache, scales in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            q, scale = self.quantize(new)  # (B, H, T, hd) int8, (B, H, T, 1)
            cache[:, :, pos: pos + T], scales[:, :, pos: pos + T] = q, scale[..., 0]

    def read(self, end: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions 0..end-1 of k and v in `dtype`."""
        k, v = self.k[:, :, :end].to(dtype), self.v[:, :, :end].to(dtype)
        if self.k_scale is not None:  # (B, H, end, hd) * (B, H, end, 1)
            k, v = k * self.k_scale[:, :, :end, None].to(dtype), v * self.v_scale[:, :, :end, None].to(dtype)
        return k, v


class AttentionKernel:
    """Seam: how attention is computed. This base class is plain torch (SDPA); a backend passes a
    subclass to `GPT.use_kernels`."""

    whole_kind = one_query_kind = "sdpa"  # what each method runs on, for the backend's report

    def whole(self, qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor | None:
        """Attention over a whole sequence from position 0 (fine passes, prefills): qkv (B, T, 3C) ->
        (B, T, C), or None for the model's own SDPA."""
        return None

    def one_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One new position against the cache: q (B, H, 1, hd), k and v (B, H, L, hd) -> (B, H, 1, hd)."""
        return F.scaled_dot_product_attention(q, k, v)


class DecodeStep(Protocol):
    """Seam: every block of a causal GPT for one position per row, x (B, 1, C) -> (B, 1, C), writing
    the new keys and values into `cache` at `pos`."""

    def __call__(self, x: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor: ...


class WindowPasses(Protocol):
    """Seam: the fine GPT's passes over a window, codes (B, T, n_codes_total) -> logits (B, T - start, V) of
    `codebook`, in place of `FineGPT.forward` (backends/cuda: one text's pass replayed from a CUDA graph).
    `kind` names it in the backend's report."""

    kind: str

    def __call__(self, codes: torch.Tensor, codebook: int, start: int) -> torch.Tensor: ...


class Decoder(Protocol):
    """Seam: how a causal GPT runs over its KV cache, from the cache's making to the logits, in place of the
    model's own code (backends/cuda: static caches and a step captured as a CUDA graph). `kind` names it
    in the backend's report."""

    kind: str

    def new_cache(self, batch: int, max_len: int) -> KVCache: ...

    def prefill(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """embeds (B, T, C) at positions 0..T-1 -> logits of the last position (B, V)."""

    def step(self, token: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """token ids (B,) at position `pos` -> next logits (B, V)."""

    def release(self) -> None:
        """Free the caches (and whatever is kept with them) that no generation is using."""


LinearFactory = Callable[[nn.Module], "nn.Module | None"]  # seam: a replacement for a linear layer, or None


class GeluLinear(Protocol):
    """Seam: a backend's linear layer (put in place by swap_linears) that also offers gelu(layer(x)) in one pass,
    the GELU in the product's epilogue; the MLP calls it for its first product where the layer has it. Its GELU may
    be the backend's own close approximation (the fast modes'); the layer documents which."""

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor: ...


class SelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.att_proj = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.kernel = AttentionKernel()  # set through GPT.use_kernels

    def forward(self, x: torch.Tensor, cache: LayerCache | None, pos: int, first: int = 0) -> torch.Tensor:
        """x (B, T, C) -> (B, T - first, C): the outputs of positions first..T-1 only, each attending as it would
        in the whole pass (a model's last block, whose other outputs nothing reads: a prefill's last position, a
        fine pass's predicted positions). Every position's keys and values are used, and cached."""
        B, T, C = x.shape
        hd = C // self.n_head
        qkv = self.att_proj(x)  # (B, T, 3C)
        q, k, v = qkv.view(B, T, 3, self.n_head, hd).permute(2, 0, 3, 1, 4)  # (B, T, 3C) -> 3 x (B, H, T, hd)
        if cache is not None:
            cache.write(pos, k, v)
        prefill = pos == 0 and T > 1  # attends to its own keys, as computed (a cache may hold them rounded)
        if cache is not None and not prefill:
            # every cached position; a cache in another dtype than the activations (a fast mode's bfloat16 or int8
            # cache) is read in theirs
            k, v = cache.read(pos + T, q.dtype)
        if first:
            q = q[:, :, first:]  # (B, H, T - first, hd)
            if cache is None:  # non-causal: every query sees every position
                y = F.scaled_dot_product_attention(q, k, v)
            elif first == T - 1:  # the last query sees every position
                y = self.kernel.one_query(q, k, v)
            else:  # query i sees positions 0..pos + i
                mask = torch.ones(T - first, pos + T, dtype=torch.bool, device=x.device).tril(pos + first)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out_proj(y.transpose(1, 2).reshape(B, T - first, C))  # (B, H, T - first, hd) -> (B, T - first, C)
        if cache is None or prefill:
            y = self.kernel.whole(qkv, self.n_head, cache is not None)  # (B, T, C) or None
            if y is not None:
                return self.out_proj(y)
        if cache is None:  # non-causal full attention (fine model)
            y = F.scaled_dot_product_attention(q, k, v)
        elif prefill:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new token attends to every cached position
            y = self.kernel.one_query(q, k, v)
        else:  # several new tokens after a prefix: causal mask aligned to the bottom right
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, H, T, hd) -> (B, T, C)
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.in_proj = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.out_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.in_proj, "forward_gelu", None)  # a GeluLinear's
        return self.out_proj(fused(x) if fused is not None else F.gelu(self.in_proj(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, norm_bias: bool):
        super().__init__()
        self.layernorm_1 = nn.LayerNorm(config.n_embd, bias=norm_bias)
        self.attn = SelfAttention(config)
        self.layernorm_2 = nn.LayerNorm(config.n_embd, bias=norm_bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, pos: int = 0, first: int = 0):
        """(B, T, C) -> (B, T - first, C): with `first`, the outputs of positions first..T-1 only (SelfAttention)."""
        h = self.attn(self.layernorm_1(x), cache, pos, first)
        x = x[:, first:] + h
        return x + self.mlp(self.layernorm_2(x))


class GPT(nn.Module):
    """What both GPTs share: the seams a backend fills."""

    config: GPTConfig
    layers: nn.ModuleList

    def use_kernels(self, attention: AttentionKernel | None = None) -> None:
        """Compute every layer's attention with `attention` (None: plain torch)."""
        for block in self.layers:
            block.attn.kernel = attention or AttentionKernel()

    def swap_linears(self, make: LinearFactory, swapped: bool = False) -> int:
        """Replace every nn.Linear of the model by `make(linear)` (see `swap_linears`)."""
        return swap_linears(self, make, swapped)


def is_linear(module: nn.Module, swapped: bool) -> bool:
    """An nn.Linear; with `swapped`, also what a backend put in one's place (a module with nn.Linear's
    in_features and out_features)."""
    return isinstance(module, nn.Linear) or (swapped and hasattr(module, "in_features")
                                             and hasattr(module, "out_features"))


def swap_linears(module: nn.Module, make: LinearFactory, swapped: bool = False) -> int:
    """Replace every nn.Linear under `module`, at any depth, by `make(linear)`, in place; where `make`
    returns None the layer stays. With `swapped`, layers a backend replaced earlier are offered to `make`
    too. Returns how many were replaced."""
    replaced = 0
    for name, child in module.named_children():
        if is_linear(child, swapped):
            new = make(child)
            if new is not None:
                setattr(module, name, new)
                replaced += 1
        else:
            replaced += swap_linears(child, make, swapped)
    return replaced


class CausalGPT(GPT):
    """The semantic and coarse models: causal, learned absolute positions, decoded over a KV cache."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.input_embeds_layer = nn.Embedding(config.input_vocab_size, config.n_embd)
        self.position_embeds_layer = nn.Embedding(config.block_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, norm_bias=config.bias) for _ in range(config.n_layer))
        self.layernorm_final = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.output_vocab_size, bias=False)
        self.decode_step: DecodeStep | None = None  # None: the blocks themselves; set through use_kernels
        self.decoder: Decoder | None = None  # None: the model's own caches, prefill and step; set through use_kernels
        self.cache_dtype: torch.dtype | None = None  # None: the model's dtype; set through use_kernels
        self.cache_quantize: Quantizer | None = None  # None: quantize_rows; set through use_kernels

    def use_kernels(self, attention: AttentionKernel | None = None, decode_step: DecodeStep | None = None,
                    decoder: Decoder | None = None, cache_dtype: torch.dtype | None = None,
                    cache_quantize: Quantizer | None = None) -> None:
        """Also run one-position steps with `decode_step` (None: block by block), the cache work with
        `decoder` (None: the model's own), and keep the model's own KV caches in `cache_dtype` (None: the
        model's dtype; the blocks read another in the activations' dtype), an int8 one rounded by `cache_quantize`
        (None: quantize_rows; a backend's must give its bits)."""
        super().use_kernels(attention)
        self.decode_step, self.decoder, self.cache_dtype = decode_step, decoder, cache_dtype
        self.cache_quantize = cache_quantize

    def release_caches(self) -> None:
        """Free the decoder's kept caches that no generation is using (offload: the model leaves the device)."""
        if self.decoder is not None:
            self.decoder.release()

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        if self.decoder is not None:
            return self.decoder.new_cache(batch, max_len or self.config.block_size)
        w = self.position_embeds_layer.weight  # (lm_head's weight may be swapped away by a backend)
        return KVCache.empty(self.config, batch, max_len or self.config.block_size, w.device,
                             self.cache_dtype or w.dtype, self.cache_quantize)

    def prefill(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """embeds (B, T, C) at positions 0..T-1, into a fresh cache -> logits of the last position (B, V)."""
        return self.decoder.prefill(embeds, cache) if self.decoder is not None else self(embeds, cache, 0)

    def decode(self, token: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """token ids (B,) at position `pos` -> next logits (B, V)."""
        if self.decoder is not None:
            return self.decoder.step(token, cache, pos)
        return self(self.input_embeds_layer(token)[:, None], cache, pos)  # (B, C) -> (B, 1, C)

    def forward(self, embeds: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """Run `embeds` (B, T, C) at positions pos..pos+T-1; return the logits of the last position (B, V)."""
        T = embeds.shape[1]
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of {pos + T} positions exceeds the context of {self.config.block_size}")
        x = embeds + self.position_embeds_layer.weight[pos : pos + T]
        if T == 1 and self.decode_step is not None:
            x = self.decode_step(x, cache, pos)
        else:  # the last block for the last position only: the other positions' outputs are never read
            last = len(self.layers) - 1
            for i, block in enumerate(self.layers):
                x = block(x, cache.layer(i), pos, first=T - 1 if i == last else 0)
        return self.lm_head(self.layernorm_final(x[:, -1]))


class FineGPT(GPT):
    """The fine model: non-causal; input = sum of the embeddings of codebooks 0..k; one head per predicted codebook."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.input_embeds_layers = nn.ModuleList(
            nn.Embedding(config.input_vocab_size, config.n_embd) for _ in range(config.n_codes_total)
        )
        self.position_embeds_layer = nn.Embedding(config.block_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, norm_bias=True) for _ in range(config.n_layer))
        self.layernorm_final = nn.LayerNorm(config.n_embd)
        n_heads = config.n_codes_total - config.n_codes_given
        self.lm_heads = nn.ModuleList(
            nn.Linear(config.n_embd, config.output_vocab_size, bias=False) for _ in range(n_heads)
        )

    passes: "WindowPasses | None" = None  # None: the model's own forward; set through use_kernels

    def use_kernels(self, attention: AttentionKernel | None = None, passes: "WindowPasses | None" = None) -> None:
        """Also run the pipeline's window passes (`logits`) with `passes` (None: the model's forward)."""
        super().use_kernels(attention)
        self.passes = passes

    def logits(self, codes: torch.Tensor, codebook: int, start: int = 0) -> torch.Tensor:
        """What the pipeline calls: `forward`, or the backend's `passes` in its place."""
        return self.passes(codes, codebook, start) if self.passes is not None else self(codes, codebook, start)

    def tie_weights(self) -> None:
        """lm_heads[i] shares its weight with input_embeds_layers[i + n_codes_given], as in the checkpoints."""
        for i, head in enumerate(self.lm_heads):
            head.weight = self.input_embeds_layers[i + self.config.n_codes_given].weight

    def forward(self, codes: torch.Tensor, codebook: int, start: int = 0) -> torch.Tensor:
        """codes (B, T, n_codes_total) -> logits (B, T - start, V) of `codebook` for positions start..T-1."""
        if not self.config.n_codes_given <= codebook < self.config.n_codes_total:
            raise ValueError(f"the fine model predicts codebooks {self.config.n_codes_given}.."
                             f"{self.config.n_codes_total - 1}, not {codebook}")
        T = codes.shape[1]
        x = self.position_embeds_layer.weight[:T]
        for i in range(codebook + 1):
            x = x + self.input_embeds_layers[i](codes[:, :, i])
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):  # the last block for the positions asked for only
            x = block(x, first=start if i == last else 0)
        x = self.layernorm_final(x)  # (B, T - start, C)
        return self.lm_heads[codebook - self.config.n_codes_given](x)
