"""The decode step as five Triton kernels per block, in place of ~14 torch kernels (cuBLAS GEMMs, LayerNorms,
adds, GELU, the cache write and SDPA): on an H200 a bark-small step is 168 kernels whose fixed costs, not the
185 MB of weights, set its time (0.62 ms against a 0.05 ms bandwidth floor; benchmarks/RESULTS.md, section 41).

Per block, for R rows (R <= 16 is one tile of rows; the weights are read once per tile):
1. `linear`: LayerNorm 1 (statistics in float32) folded into the q/k/v product's loads;
2. `attend`: the one-query attention of each (row, head) over the keys before `pos` (read from a device
   tensor, so one graph serves every position), with the new key and value from q/k/v, which it then writes
   into the cache at `pos`;
3. `linear` with the residual added: the attention's out_proj;
4. `linear`: LayerNorm 2 folded in, and the exact (erf) GELU on the product;
5. `linear` with the residual added: the MLP's out_proj.
Then one kernel embeds the tokens (token + position) before the blocks, and one `linear` is the final
LayerNorm and the head after them: 5 x n_layer + 2 kernels a step.

Every row's numbers are computed by the same instructions in the same order whatever the other rows hold
and however many rows run (rows are never reduced together), so the step keeps a row's bits whatever its
batch without padding to a fixed row count. Products accumulate in float32 from half-precision inputs
(as cuBLAS does); the LayerNorm's output, the products' outputs and the residual stream are rounded to the
model's dtype where torch's step rounds them. The numbers are close to, not equal to, the torch step's.

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
    """Block sizes: `n` output columns and `k` inputs per step of a product, with `warps`; `keys` cached
    positions per step of the attention, with `attend_warps`."""
    n: int = 32
    k: int = 128
    warps: int = 4
    keys: int = 64
    attend_warps: int = 2

    @property
    def name(self) -> str:
        return f"triton-n{self.n}k{self.k}w{self.warps}-t{self.keys}w{self.attend_warps}"


# The candidates a GPU times (decoder.choose_step): narrow column blocks give more programs over the few
# columns of a decode product (out_proj: 768), wide ones fewer, longer reads.
TILES = (Tiles(), Tiles(n=16, k=128), Tiles(n=64, k=64), Tiles(n=32, k=64, warps=2, keys=32))


@triton.jit
def _embed(token_ptr, pos_ptr, wte_ptr, wpe_ptr, out_ptr, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[r] = wte[token[r]] + wpe[pos]: one program per row."""
    r = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    token = tl.load(token_ptr + r)
    pos = tl.load(pos_ptr)
    e = tl.load(wte_ptr + token * C + cols, mask=mask, other=0.0) + tl.load(wpe_ptr + pos * C + cols, mask=mask,
                                                                            other=0.0)
    tl.store(out_ptr + r * C + cols, e, mask=mask)


@triton.jit
def _linear(x_ptr, g_ptr, beta_ptr, w_ptr, b_ptr, res_ptr, y_ptr, R, K, N, eps,
            NORM: tl.constexpr, NORM_BIAS: tl.constexpr, BIAS: tl.constexpr,
            GELU: tl.constexpr, RESIDUAL: tl.constexpr, PRECISION: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y (R, N) = [res +] [gelu] ([LayerNorm(x)] (R, K) @ w.T (K, N) [+ b]); w is nn.Linear's (N, K). The
    sizes are arguments, not constants, so that one compiled kernel serves every layer of every model.
    Program (j, i): columns j*BLOCK_N.., rows i*BLOCK_M..; the LayerNorm's statistics are computed by each
    program over its rows (x is a few kilobytes, read from L2)."""
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < R, cols < N
    dtype = w_ptr.dtype.element_ty
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORM:  # two passes over x: the mean, then the variance around it (as torch's LayerNorm, biased)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xk = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :],
                         other=0.0).to(tl.float32)
            mean += tl.sum(xk, axis=1)
        mean = mean / K
        var = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            ok = row_ok[:, None] & (ks < K)[None, :]
            xk = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=ok, other=0.0).to(tl.float32)
            d = tl.where(ok, xk - mean[:, None], 0.0)
            var += tl.sum(d * d, axis=1)
        rstd = 1.0 / tl.sqrt(var / K + eps)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        xk = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            g = tl.load(g_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            xn = (xk.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :]
            if NORM_BIAS:
                xn += tl.load(beta_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            xk = xn.to(dtype)  # torch's LayerNorm returns the model's dtype
        w = tl.load(w_ptr + cols[:, None] * K + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(xk, tl.trans(w), input_precision=PRECISION)  # (M, BK) @ (BK, BN), float32 sums
    if BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(dtype)  # the product, rounded as torch's linear rounds it
    if GELU:
        h = y.to(tl.float32)
        y = (0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))).to(dtype)
    out = rows[:, None] * N + cols[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    if RESIDUAL:
        y = (tl.load(res_ptr + out, mask=ok, other=0.0).to(tl.float32) + y.to(tl.float32)).to(dtype)
    tl.store(y_ptr + out, y, mask=ok)


@triton.jit
def _attend(qkv_ptr, kv_ptr, y_ptr, pos_ptr, s_kind, s_row, s_head, s_pos, scale,
            H: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr):
    """Program (r, h): row r's query of head h (from qkv (R, 3C)) over the cached keys 0..pos-1 of one layer's
    cache (kv: (2, rows, H, max_len, HD) by its strides) and the new key (from qkv), by an online softmax in
    float32; y (R, C) gets the result, and the cache the new key and value at pos."""
    r, h = tl.program_id(0), tl.program_id(1)
    C: tl.constexpr = H * HD
    d = tl.arange(0, HD)
    new = qkv_ptr + r * 3 * C + h * HD + d
    q = tl.load(new).to(tl.float32)
    k_new = tl.load(new + C)
    v_new = tl.load(new + 2 * C)
    pos = tl.load(pos_ptr).to(tl.int32)
    keys = kv_ptr + r * s_row + h * s_head
    values = keys + s_kind
    m = tl.sum(q * k_new.to(tl.float32), axis=0) * scale  # the running maximum, from the new key's score
    total = m * 0.0 + 1.0  # the running sum of exp(score - m): the new key's term
    acc = v_new.to(tl.float32)
    for t0 in range(0, pos, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        t_ok = ts < pos
        k = tl.load(keys + ts[:, None] * s_pos + d[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
        s = tl.where(t_ok, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))  # (BLOCK_T,)
        m_next = tl.maximum(m, tl.max(s, axis=0))
        shrink = tl.exp(m - m_next)
        p = tl.exp(s - m_next)
        v = tl.load(values + ts[:, None] * s_pos + d[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
        acc = acc * shrink + tl.sum(p[:, None] * v, axis=0)
        total = total * shrink + tl.sum(p, axis=0)
        m = m_next
    tl.store(y_ptr + r * C + h * HD + d, (acc / total).to(k_new.dtype))
    tl.store(keys + pos * s_pos + d, k_new)
    tl.store(values + pos * s_pos + d, v_new)


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


def linear(x: torch.Tensor, layer: torch.nn.Linear, tiles: Tiles, norm: torch.nn.LayerNorm | None = None,
           gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x (R, K) -> (R, N): [residual +] [gelu] (layer([norm](x))), one kernel."""
    R, K = x.shape
    N = layer.out_features
    y = torch.empty(R, N, device=x.device, dtype=layer.weight.dtype)
    w, b = layer.weight, layer.bias
    precision = "ieee" if w.dtype == torch.float32 else None  # float32 inputs: exact products, not TF32
    grid = (triton.cdiv(N, tiles.n), triton.cdiv(R, ROW_TILE))
    _linear[grid](x, norm.weight if norm is not None else w, norm.bias if norm is not None and norm.bias is not None
                  else w, w, b if b is not None else w, residual if residual is not None else y, y, R, K, N,
                  norm.eps if norm is not None else 0.0, NORM=norm is not None, NORM_BIAS=norm is not None and norm.bias is not None,
                  BIAS=b is not None, GELU=gelu, RESIDUAL=residual is not None, PRECISION=precision,
                  BLOCK_M=ROW_TILE, BLOCK_N=tiles.n, BLOCK_K=tiles.k, num_warps=tiles.warps)
    return y


def token_step(model: CausalGPT, token: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor,
               tiles: Tiles) -> torch.Tensor:
    """token (R,) int64 at position pos ((1,) int64, on the device) -> next logits (R, V), writing the new keys
    and values at pos into the cache kv (n_layer, 2, rows >= R, H, max_len, hd). The same contract as
    `decoder.token_step`, without its key count: the kernels read pos."""
    c = model.config
    R, C, H = token.shape[0], c.n_embd, c.n_head
    hd = C // H
    x = torch.empty(R, C, device=token.device, dtype=kv.dtype)
    _embed[(R,)](token, pos, model.input_embeds_layer.weight, model.position_embeds_layer.weight, x,
                 C=C, BLOCK_C=triton.next_power_of_2(C))
    s_kind, s_row, s_head, s_pos = kv.stride()[1:5]  # kv[i]: (2, rows, H, max_len, hd), the last stride 1
    for i, block in enumerate(model.layers):
        qkv = linear(x, block.attn.att_proj, tiles, norm=block.layernorm_1)  # (R, 3C)
        y = torch.empty(R, C, device=x.device, dtype=x.dtype)
        _attend[(R, H)](qkv, kv[i], y, pos, s_kind, s_row, s_head, s_pos, 1.0 / math.sqrt(hd), H=H, HD=hd,
                        BLOCK_T=tiles.keys, num_warps=tiles.attend_warps)
        x = linear(y, block.attn.out_proj, tiles, residual=x)
        h = linear(x, block.mlp.in_proj, tiles, norm=block.layernorm_2, gelu=True)  # (R, 4C)
        x = linear(h, block.mlp.out_proj, tiles, residual=x)
    return linear(x, model.lm_head, tiles, norm=model.layernorm_final)  # (R, V)
