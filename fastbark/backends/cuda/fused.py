"""The decode step as Triton kernels, 8 a block, in place of ~13 torch kernels (cuBLAS GEMMs and their
split-K reductions, LayerNorms, adds, GELU, the cache write, SDPA): on an H200 a bark-small step is 156
kernels whose fixed costs, not the 185 MB of weights, set its time (0.59 ms against a 0.05 ms bandwidth
floor; benchmarks/RESULTS.md).

Per block, for R rows (a product reads its weights once per 16 rows):
1. `_linear`: the q/k/v product of the normalised rows, which also writes the new keys and values into the
   cache at `pos` (read from a device tensor, so that one graph serves every position);
2. `_attend`: each (row, head, chunk of `Tiles.keys` cached positions) attends to the keys of its chunk up to
   pos: a partial softmax (its maximum, its sum, its weighted values) in float32;
3. `_combine`: each (row, head) merges its chunks' partials in a fixed order;
4. `_linear`: the attention's out_proj, its inputs split `Tiles.split` ways into float32 partial sums (more
   programs over few columns);
5. `_residual_norm`: one program a row sums the partials, adds the bias and the residual, and normalises
   (LayerNorm 2, statistics in float32, the row whole in one block);
6. `_linear`: the MLP's in_proj with the exact (erf) GELU;
7. `_linear`: the MLP's out_proj, split as in 4;
8. `_residual_norm`: as 5, with the next block's LayerNorm 1 (the final LayerNorm after the last block).
Before the blocks, `_embed_norm` adds the token's and the position's embeddings and normalises; after them,
`_linear` is the head: 8 x n_layer + 2 kernels a step (98 for bark-small).

Every row's numbers come from the same instructions in the same order whatever the other rows hold and
however many rows run (rows are never summed together), so the step keeps a row's bits whatever its batch
without padding to a fixed row count. Products sum in float32 from half-precision inputs (as cuBLAS does);
LayerNorm outputs, products and the residual stream are rounded to the model's dtype where torch's step
rounds them. The numbers are close to, not equal to, the torch step's (other summation orders).

`Tiles` are the kernels' block sizes; on a GPU the backend times candidates in a captured step (see
`decoder.choose_step`). On a CPU, Triton's interpreter (TRITON_INTERPRET=1) runs these same kernels in the
tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...models.gpt import CausalGPT

ROW_TILE = 16  # rows per program of a product: the smallest M of a tensor-core product (tl.dot)


@dataclass(frozen=True)
class Tiles:
    """Block sizes: `n` output columns and `k` inputs per step of a product, with `warps`; `split`: the ways the
    inputs of out_proj and the MLP's out_proj are split; `keys`: cached positions per attention program."""
    n: int = 32
    k: int = 128
    warps: int = 4
    split: int = 4
    keys: int = 128

    @property
    def name(self) -> str:
        return f"triton-n{self.n}k{self.k}w{self.warps}s{self.split}t{self.keys}"


# The candidates a GPU times (decoder.choose_step): narrow column blocks and more splits give more programs
# over the few columns of a decode product (out_proj: 768 columns), wide ones fewer, longer reads; long input
# blocks fewer steps of each program's loop. On the H200 (RESULTS section 42, times at 1 and 16 rows summed) the
# first won at bark-small, the second was 5% behind, the fourth 16% and the third 35%; the last two are not yet
# measured.
TILES = (Tiles(), Tiles(n=16, keys=64), Tiles(n=64, k=64, split=2), Tiles(n=32, k=64, warps=2, split=8, keys=64),
         Tiles(n=32, k=256, warps=8), Tiles(n=16, k=256, split=8))


@triton.jit
def _norm_store(x, cols, ok, g_ptr, beta_ptr, out_ptr, C, eps, NORM_BIAS: tl.constexpr):
    """LayerNorm of one row x (BLOCK_C,) whose first C entries are real (`ok`), stored at out_ptr + cols in
    out_ptr's dtype: mean, then the biased variance around it, in float32."""
    xf = tl.where(ok, x.to(tl.float32), 0.0)
    mean = tl.sum(xf, axis=0) / C
    d = tl.where(ok, xf - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    y = d * rstd * tl.load(g_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if NORM_BIAS:
        y += tl.load(beta_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + cols, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _embed_norm(token_ptr, pos_ptr, wte_ptr, wpe_ptr, g_ptr, beta_ptr, x_ptr, xn_ptr, C, eps,
                NORM_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program r: x[r] = wte[token[r]] + wpe[pos], and xn[r] = LayerNorm(x[r])."""
    r = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    token = tl.load(token_ptr + r)
    pos = tl.load(pos_ptr)
    x = tl.load(wte_ptr + token * C + cols, mask=ok, other=0.0) + tl.load(wpe_ptr + pos * C + cols, mask=ok,
                                                                          other=0.0)
    tl.store(x_ptr + r * C + cols, x, mask=ok)
    _norm_store(x, cols, ok, g_ptr, beta_ptr, xn_ptr + r * C, C, eps, NORM_BIAS)


@triton.jit
def _residual_norm(part_ptr, b_ptr, x_ptr, g_ptr, beta_ptr, xn_ptr, R, C, eps, SPLIT: tl.constexpr,
                   BIAS: tl.constexpr, NORM_BIAS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program r: the product of row r is the sum of its SPLIT float32 partials (part: (SPLIT, R, C)) plus the
    bias, rounded to the model's dtype; x[r] += it, in place; xn[r] = LayerNorm(x[r])."""
    r = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    ok = cols < C
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s in tl.static_range(SPLIT):  # in a fixed order
        acc += tl.load(part_ptr + (s * R + r) * C + cols, mask=ok, other=0.0)
    if BIAS:
        acc += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    x = (tl.load(x_ptr + r * C + cols, mask=ok, other=0.0).to(tl.float32) + acc.to(dtype).to(tl.float32)).to(dtype)
    tl.store(x_ptr + r * C + cols, x, mask=ok)
    _norm_store(x, cols, ok, g_ptr, beta_ptr, xn_ptr + r * C, C, eps, NORM_BIAS)


@triton.jit
def _linear(x_ptr, w_ptr, b_ptr, out_ptr, kv_ptr, pos_ptr, R, K, N, k_per_split, s_kind, s_row, s_head, s_pos,
            HD: tl.constexpr, BIAS: tl.constexpr, GELU: tl.constexpr, PARTIAL: tl.constexpr,
            STORE_KV: tl.constexpr, PRECISION: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """x (R, K) @ w.T (K, N), w being nn.Linear's (N, K). Program (j, i, s): columns j*BLOCK_N.., rows
    i*BLOCK_M.., inputs s*k_per_split... PARTIAL: the float32 sums go to out (SPLIT, R, N) as they are.
    Otherwise out (R, N) = [gelu](x @ w.T [+ b]) in the model's dtype; with STORE_KV (the q/k/v product,
    N = 3C) its key and value columns are also written into the cache of one layer (kv: (2, rows, H, max_len,
    HD) by its strides) at the position pos."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < R, cols < N
    k_first = tl.program_id(2) * k_per_split
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_first, k_first + k_per_split, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        xk = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * K + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(xk, tl.trans(w), input_precision=PRECISION)  # (M, BK) @ (BK, BN), float32 sums
    ok = row_ok[:, None] & col_ok[None, :]
    if PARTIAL:
        tl.store(out_ptr + (tl.program_id(2) * R + rows[:, None]) * N + cols[None, :], acc, mask=ok)
    else:
        if BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        dtype = w_ptr.dtype.element_ty
        y = acc.to(dtype)  # the product, rounded as torch's linear rounds it
        if GELU:
            h = y.to(tl.float32)
            y = (0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))).to(dtype)
        tl.store(out_ptr + rows[:, None] * N + cols[None, :], y, mask=ok)
        if STORE_KV:  # columns C.. are the keys, 2C.. the values; C = N / 3
            C = N // 3
            j = tl.where(cols >= C, cols - C, 0)
            kind, head, d = j // C, (j % C) // HD, j % HD
            pos = tl.load(pos_ptr)
            where = kv_ptr + kind * s_kind + head * s_head + pos * s_pos + d  # (BLOCK_N,)
            tl.store(where[None, :] + rows[:, None] * s_row, y, mask=ok & (cols >= C)[None, :])


@triton.jit
def _attend(qkv_ptr, kv_ptr, part_ptr, pos_ptr, s_kind, s_row, s_head, s_pos, scale, S,
            H: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr):
    """Program (r, h, s): row r's query of head h (from qkv (R, 3C)) over the cached keys of chunk s
    (positions s*BLOCK_T.. up to pos, the new key included: the q/k/v product wrote it) of one layer's cache
    (kv: (2, rows, H, max_len, HD) by its strides). Its partial, in float32, to part (R, H, S, HD + 2): the
    exp-weighted values, the chunk's maximum score and its sum of exp(score - maximum). A chunk past pos
    leaves (0, -inf, 0)."""
    r, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    C: tl.constexpr = H * HD
    d = tl.arange(0, HD)
    q = tl.load(qkv_ptr + r * 3 * C + h * HD + d).to(tl.float32)
    pos = tl.load(pos_ptr).to(tl.int32)
    ts = s * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = ts <= pos
    keys = kv_ptr + r * s_row + h * s_head + ts[:, None] * s_pos + d[None, :]  # (BLOCK_T, HD)
    k = tl.load(keys, mask=t_ok[:, None], other=0.0).to(tl.float32)
    v = tl.load(keys + s_kind, mask=t_ok[:, None], other=0.0).to(tl.float32)
    scores = tl.where(t_ok, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))  # (BLOCK_T,)
    m = tl.max(scores, axis=0)
    p = tl.exp(scores - tl.where(m == float("-inf"), 0.0, m))  # an empty chunk: all zero
    out = part_ptr + ((r * H + h) * S + s) * (HD + 2)
    tl.store(out + d, tl.sum(p[:, None] * v, axis=0))
    tl.store(out + HD, m)
    tl.store(out + HD + 1, tl.sum(p, axis=0))


@triton.jit
def _combine(part_ptr, y_ptr, S, H: tl.constexpr, HD: tl.constexpr, BLOCK_S: tl.constexpr):
    """Program (r, h): the attention of row r, head h, from its S chunks' partials, in chunk order, to
    y (R, C) in the model's dtype."""
    r, h = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, HD)
    ss = tl.arange(0, BLOCK_S)
    s_ok = ss < S
    base = part_ptr + (r * H + h) * S * (HD + 2) + ss * (HD + 2)  # (BLOCK_S,)
    m = tl.load(base + HD, mask=s_ok, other=float("-inf"))
    total = tl.load(base + HD + 1, mask=s_ok, other=0.0)
    weight = tl.exp(m - tl.max(m, axis=0))  # chunk 0 holds key 0, so the maximum is finite; empty chunks: 0
    acc = tl.load(base[:, None] + d[None, :], mask=s_ok[:, None], other=0.0)  # (BLOCK_S, HD)
    y = tl.sum(weight[:, None] * acc, axis=0) / tl.sum(weight * total, axis=0)
    tl.store(y_ptr + r * (H * HD) + h * HD + d, y.to(y_ptr.dtype.element_ty))


def supports(model: CausalGPT) -> str | None:
    """Why these kernels cannot run `model`'s step, or None: its products must be plain nn.Linear layers
    (a backend may have swapped them) and a head's size a power of two."""
    c = model.config
    hd = c.n_embd // c.n_head
    if hd & (hd - 1) or hd < 16:
        return f"head size {hd} is not a power of two of at least 16"
    linears = [model.lm_head] + [m for b in model.layers for m in (b.attn.att_proj, b.attn.out_proj,
                                                                   b.mlp.in_proj, b.mlp.out_proj)]
    if any(type(m) is not torch.nn.Linear or not m.weight.is_contiguous() for m in linears):
        return "its linear layers are not plain contiguous nn.Linear"
    return None


class Step:
    """The buffers and launches of one decode step over R rows (all allocated per call: inside a CUDA graph
    they come from the graph's own memory pool)."""

    def __init__(self, model: CausalGPT, kv: torch.Tensor, R: int, tiles: Tiles):
        c = model.config
        self.model, self.kv, self.R, self.tiles = model, kv, R, tiles
        self.C, self.H, self.hd = c.n_embd, c.n_head, c.n_embd // c.n_head
        self.S = triton.cdiv(kv.shape[4], tiles.keys)  # chunks of the cache's positions
        self.strides = kv.stride()[1:5]  # kv[i]: (2, rows, H, max_len, hd), the last stride 1
        dev, dtype = kv.device, kv.dtype
        self.x = torch.empty(R, self.C, device=dev, dtype=dtype)  # the residual stream
        self.xn = torch.empty(R, self.C, device=dev, dtype=dtype)  # its LayerNorm
        self.y = torch.empty(R, self.C, device=dev, dtype=dtype)  # the attention's output
        self.qkv = torch.empty(R, 3 * self.C, device=dev, dtype=dtype)
        self.h = torch.empty(R, 4 * self.C, device=dev, dtype=dtype)  # the MLP's hidden layer
        self.parts = torch.empty(tiles.split, R, self.C, device=dev, dtype=torch.float32)
        self.scores = torch.empty(R, self.H, self.S, self.hd + 2, device=dev, dtype=torch.float32)

    def linear(self, x: torch.Tensor, layer: torch.nn.Linear, out: torch.Tensor, *, pos: torch.Tensor | None = None,
               kv: torch.Tensor | None = None, gelu: bool = False, split: int = 1) -> None:
        """out = [gelu](layer(x)); with split > 1 the float32 partial sums (no bias) into out (split, R, N);
        with kv, the key and value columns also into that layer's cache at pos."""
        t, (K, N) = self.tiles, (layer.in_features, layer.out_features)
        w, b = layer.weight, layer.bias
        per_split = triton.cdiv(triton.cdiv(K, split), t.k) * t.k
        grid = (triton.cdiv(N, t.n), triton.cdiv(self.R, ROW_TILE), split)
        strides = self.strides if kv is not None else (0, 0, 0, 0)
        _linear[grid](x, w, b if b is not None else w, out, kv if kv is not None else out,
                      pos if pos is not None else out, self.R, K, N, per_split, *strides,
                      HD=self.hd, BIAS=b is not None, GELU=gelu, PARTIAL=split > 1, STORE_KV=kv is not None,
                      PRECISION="ieee" if w.dtype == torch.float32 else None,  # float32: exact, not TF32
                      BLOCK_M=ROW_TILE, BLOCK_N=t.n, BLOCK_K=t.k, num_warps=t.warps)

    def residual_norm(self, layer: torch.nn.Linear, norm: torch.nn.LayerNorm) -> None:
        """x += the split product of `layer` (in self.parts) and its bias; xn = norm(x)."""
        b = layer.bias
        _residual_norm[(self.R,)](self.parts, b if b is not None else self.x, self.x, norm.weight,
                                  norm.bias if norm.bias is not None else norm.weight, self.xn, self.R, self.C,
                                  norm.eps, SPLIT=self.tiles.split, BIAS=b is not None,
                                  NORM_BIAS=norm.bias is not None, BLOCK_C=triton.next_power_of_2(self.C))

    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        m, t, R, H, hd = self.model, self.tiles, self.R, self.H, self.hd
        norm = m.layers[0].layernorm_1
        _embed_norm[(R,)](token, pos, m.input_embeds_layer.weight, m.position_embeds_layer.weight, norm.weight,
                          norm.bias if norm.bias is not None else norm.weight, self.x, self.xn, self.C, norm.eps,
                          NORM_BIAS=norm.bias is not None, BLOCK_C=triton.next_power_of_2(self.C))
        for i, block in enumerate(m.layers):
            self.linear(self.xn, block.attn.att_proj, self.qkv, pos=pos, kv=self.kv[i])
            _attend[(R, H, self.S)](self.qkv, self.kv[i], self.scores, pos, *self.strides, 1.0 / math.sqrt(hd),
                                    self.S, H=H, HD=hd, BLOCK_T=t.keys, num_warps=4)
            _combine[(R, H)](self.scores, self.y, self.S, H=H, HD=hd, BLOCK_S=triton.next_power_of_2(self.S))
            self.linear(self.y, block.attn.out_proj, self.parts, split=t.split)
            self.residual_norm(block.attn.out_proj, block.layernorm_2)
            self.linear(self.xn, block.mlp.in_proj, self.h, gelu=True)
            self.linear(self.h, block.mlp.out_proj, self.parts, split=t.split)
            following = m.layers[i + 1].layernorm_1 if i + 1 < len(m.layers) else m.layernorm_final
            self.residual_norm(block.mlp.out_proj, following)
        logits = torch.empty(R, m.lm_head.out_features, device=self.x.device, dtype=self.x.dtype)
        self.linear(self.xn, m.lm_head, logits)
        return logits  # (R, V)


def token_step(model: CausalGPT, token: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor,
               tiles: Tiles) -> torch.Tensor:
    """token (R,) int64 at position pos ((1,) int64, on the device) -> next logits (R, V), writing the new keys
    and values at pos into the cache kv (n_layer, 2, rows >= R, H, max_len, hd). The same contract as
    `decoder.token_step`, without its key count: the kernels read pos."""
    return Step(model, kv, token.shape[0], tiles)(token, pos)
