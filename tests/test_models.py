"""The models' own arithmetic (models/gpt.py): a last block that computes only the positions read."""

import pytest
import torch

from fastbark.models.gpt import Block, CausalGPT, FineGPT, GPTConfig, LayerCache

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, input_vocab_size=40, output_vocab_size=40, block_size=24,
                   bias=True)


@pytest.mark.parametrize("first", [1, 9, 15])
@pytest.mark.parametrize("causal", [False, True])
def test_a_block_for_its_last_positions_gives_those_of_the_whole_pass(first, causal):
    torch.manual_seed(0)
    block = Block(CONFIG, norm_bias=True).eval()
    x = torch.randn(2, 16, 32)
    with torch.inference_mode():
        if causal:  # a prefill into a cache: every position's keys and values are cached either way
            caches = [LayerCache(torch.zeros(2, 2, 24, 16), torch.zeros(2, 2, 24, 16)) for _ in range(2)]
            whole, part = block(x, caches[0], 0), block(x, caches[1], 0, first=first)
            torch.testing.assert_close(caches[1][:2], caches[0][:2], rtol=0, atol=0)  # k, v
        else:
            whole, part = block(x), block(x, first=first)
    assert part.shape == (2, 16 - first, 32)
    torch.testing.assert_close(part, whole[:, first:], rtol=1e-5, atol=1e-5)


def test_causal_queries_after_a_prefix_see_only_the_positions_before_them():
    """Positions pos..pos+T-1 after a cached prefix, only the last 3 computed: as in the whole pass."""
    torch.manual_seed(1)
    block = Block(CONFIG, norm_bias=True).eval()
    prefix, x = torch.randn(1, 5, 32), torch.randn(1, 6, 32)
    with torch.inference_mode():
        outs = []
        for first in (0, 3):
            cache = LayerCache(torch.zeros(1, 2, 24, 16), torch.zeros(1, 2, 24, 16))
            block(prefix, cache, 0)
            outs.append(block(x, cache, 5, first=first))
    torch.testing.assert_close(outs[1], outs[0][:, 3:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start", [0, 7, 19])
def test_a_fine_pass_from_start_gives_the_whole_pass_logits_from_there(start):
    torch.manual_seed(2)
    model = FineGPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, input_vocab_size=41, output_vocab_size=40,
                              block_size=20, n_codes_total=4, n_codes_given=1)).eval()
    codes = torch.randint(0, 41, (2, 20, 4))
    with torch.inference_mode():
        part = model(codes, 2, start)
        x = model.position_embeds_layer.weight[:20] + sum(model.input_embeds_layers[i](codes[:, :, i]) for i in range(3))
        for block in model.layers:  # every block over every position, then the positions from start
            x = block(x)
        whole = model.lm_heads[1](model.layernorm_final(x))
    assert part.shape == (2, 20 - start, 40)
    torch.testing.assert_close(part, whole[:, start:], rtol=1e-5, atol=1e-5)


def test_a_prefill_reads_the_last_position_of_the_whole_pass():
    torch.manual_seed(3)
    model = CausalGPT(CONFIG).eval()
    embeds = torch.randn(1, 10, 32)
    with torch.inference_mode():
        logits = model(embeds, model.new_cache(1), 0)  # (1, V), its last block for the last position only
        x = embeds + model.position_embeds_layer.weight[:10]
        cache = model.new_cache(1)
        for i, block in enumerate(model.layers):
            x = block(x, cache.layer(i), 0)
        whole = model.lm_head(model.layernorm_final(x[:, -1]))
    torch.testing.assert_close(logits, whole, rtol=1e-5, atol=1e-5)
