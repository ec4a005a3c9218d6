"""The fast modes' GELU (native/gelu.h) and the MLP's first product with its GELU fused (models.gpt.GeluLinear):
close to torch's GELU, the same bits on every int8 route and for a row alone, and taken by the MLP."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastbark.backends.cpu import amx as tiles
from fastbark.backends.cpu.int8 import Int8Linear, int8_kernels
from fastbark.backends.cpu.library import load_kernels, run_gelu
from fastbark.models.gpt import MLP, GPTConfig

needs_kernels = pytest.mark.skipif(load_kernels() is None or int8_kernels() is None,
                                   reason="fastbark's C kernels are not built here")
needs_amx = pytest.mark.skipif(tiles.amx_kernels() is None, reason="no AMX tiles on this CPU or build")


@needs_kernels
@pytest.mark.parametrize("n", [1, 15, 16, 17, 4096 * 3 + 5])  # tails of a vector and of a thread's span
def test_gelu_is_within_half_a_millionth_of_float64s(n):
    x = torch.cat([torch.linspace(-12, 12, n), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 60.0, -60.0, 1e30, -1e30])])
    got = run_gelu(load_kernels().s8.gelu, x.clone(), 2)
    want = F.gelu(x.double())
    assert (got.double() - want).abs().max().item() <= 5e-7
    assert got[-1] == 0 and got[-2] == 1e30 and got[-8] == 0  # far tails exact; gelu(0) = 0


@needs_kernels
@pytest.mark.parametrize("m, k, n", [(5, 96, 10), (40, 200, 70), (64, 1100, 48)])
def test_every_int8_route_gives_the_same_gelu_bits(m, k, n):
    """The rescaling pass after torch._int_mm, after exact float32 GEMMs, on the tiles where there are some, and a
    row alone through the one-position kernel: the same bits, within 1e-6 of torch's GELU of the same product."""
    torch.manual_seed(m)
    linear = nn.Linear(k, n, bias=n % 20 == 10)
    x = torch.randn(1, m, k) * 3
    routes = ["int_mm", "via-float"] + (["amx"] if tiles.amx_kernels() is not None else [])
    layers = {route: Int8Linear(linear, route=route) for route in routes}
    first = layers["int_mm"].forward_gelu(x)
    for route, layer in layers.items():
        assert torch.equal(layer.forward_gelu(x), first), route
    alone = torch.cat([layers["int_mm"].forward_gelu(x[:, i:i + 1]) for i in range(m)], 1)  # (1, 1, K) rows
    assert torch.equal(alone, first)
    product = layers["int_mm"](x)
    assert 0 < (first - F.gelu(product)).abs().max() <= 1e-6 * product.abs().max()  # another GELU, as close as said
    torch_path = Int8Linear(linear, native=False)
    assert torch.equal(torch_path.forward_gelu(x), F.gelu(torch_path(x)))  # without the kernels: torch's GELU


@needs_amx
def test_bfloat16_tiles_round_the_gelu_of_float32_sums_once():
    torch.manual_seed(0)
    linear = nn.Linear(200, 70).bfloat16()
    layer = tiles.AmxBf16Linear(linear)
    x = torch.randn(1, 40, 200).bfloat16()
    want = F.gelu(F.linear(x.float(), linear.weight.float(), linear.bias.float()))
    got = layer.forward_gelu(x)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got.float() - want).abs().max() <= 2 ** -8 * want.abs().max()  # one bfloat16 rounding
    assert torch.equal(layer.forward_gelu(x[:, :1]), F.gelu(linear(x[:, :1])))  # one position: torch's


def test_the_mlp_takes_a_layers_fused_gelu():
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, input_vocab_size=8, output_vocab_size=8, block_size=8,
                       bias=True)
    mlp = MLP(config)
    calls = []

    class Fused(nn.Linear):
        def forward_gelu(self, x):
            calls.append(x.shape)
            return torch.zeros(*x.shape[:-1], self.out_features)
    fused = Fused(16, 64)
    x = torch.randn(3, 5, 16)
    plain = mlp(x)
    mlp.in_proj = fused
    assert torch.equal(mlp(x), mlp.out_proj(torch.zeros(3, 5, 64))) and calls == [(3, 5, 16)]
    assert not torch.equal(plain, mlp(x))
