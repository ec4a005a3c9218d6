"""The int8 mode's one-call decode step (models/int8_decode.py, native/decode_int8.c)."""

import shutil

import pytest
import torch

import fastbark
from fastbark.models.gpt import CausalGPT, GPTConfig
from fastbark.models.int8 import quantize_linears
from fastbark.models.int8_decode import Int8DecodeStep, int8_decode_works, use_int8_decode

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the C decode step needs a C compiler")


def float_model(n_embd: int, n_head: int, bias: bool, seed: int = 0) -> CausalGPT:
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=2, n_head=n_head, n_embd=n_embd, input_vocab_size=50, output_vocab_size=70,
                       block_size=64, bias=bias)
    model = CausalGPT(config).eval()
    for p in model.parameters():  # LayerNorms away from 1 and 0, so that their weights and biases count
        p.data.add_(0.1 * torch.randn_like(p))
    return model


def quantised_model(n_embd: int, n_head: int, bias: bool, seed: int = 0) -> CausalGPT:
    return quantize_linears(float_model(n_embd, n_head, bias, seed))


def decode(model: CausalGPT, prompt: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Prefill `prompt` (B, P, C), then decode `tokens` (B, S): the logits of every step (B, S, V)."""
    cache = model.new_cache(prompt.shape[0])
    model(prompt, cache, 0)
    steps = [model(model.input_embeds_layer(tokens[:, i])[:, None], cache, prompt.shape[1] + i)
             for i in range(tokens.shape[1])]
    return torch.stack(steps, 1), cache


@pytest.mark.parametrize("n_embd, n_head, bias", [(64, 4, False), (40, 2, True), (768, 12, False)])
@torch.inference_mode()
def test_c_step_is_as_faithful_as_the_python_step(n_embd, n_head, bias):
    """Against the float32 model, the C step errs as the block-by-block int8 step does: both are the same
    int8 arithmetic, but the C LayerNorm sums in another order, so an int8 rounding may flip now and then
    (at 768 wide, that moves the logits by ~1.5% of their range). hd = 20 and n_embd = 40 leave tails in
    every vector loop."""
    assert int8_decode_works()
    prompt, tokens = torch.randn(2, 9, n_embd), torch.randint(0, 50, (2, 6))
    reference, _ = decode(float_model(n_embd, n_head, bias), prompt, tokens)
    model = quantised_model(n_embd, n_head, bias)
    python, python_cache = decode(model, prompt, tokens)
    assert use_int8_decode(model) and isinstance(model.decode_step, Int8DecodeStep)
    c, cache = decode(model, prompt, tokens)

    def error(x):
        return ((x - reference).abs().max() / reference.abs().max()).item()
    assert 0 < error(c) <= 1.25 * error(python)
    assert ((c - python).abs().max() / reference.abs().max()).item() <= 0.5 * error(python)
    assert (c.argmax(-1) == python.argmax(-1)).float().mean() >= 0.9
    assert torch.equal(cache.k[:, :, :, :9], python_cache.k[:, :, :, :9])  # the prefill's positions are untouched
    written = slice(9, 15)  # and the decode steps wrote theirs
    assert (cache.v[:, :, :, written] - python_cache.v[:, :, :, written]).abs().max() <= 0.1 * python_cache.v[
        :, :, :, written].abs().max()


@torch.inference_mode()
def test_c_step_rows_do_not_depend_on_batch_or_threads():
    model = quantised_model(64, 4, True)
    use_int8_decode(model)
    prompt, tokens = torch.randn(5, 7, 64), torch.randint(0, 50, (5, 4))
    batch, _ = decode(model, prompt, tokens)
    for i in range(5):
        alone, _ = decode(model, prompt[i: i + 1], tokens[i: i + 1])
        assert torch.equal(alone, batch[i: i + 1]), i
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(decode(model, prompt, tokens)[0], batch)
    finally:
        torch.set_num_threads(threads)


def test_engine_uses_the_c_step_in_int8_float32_only(hub_dir):
    tts = fastbark.Bark.from_pretrained(hub_dir, quantize="int8")
    assert isinstance(tts.semantic_model.decode_step, Int8DecodeStep)
    assert isinstance(tts.coarse_model.decode_step, Int8DecodeStep)
    for options in (dict(quantize="int8", dtype="bfloat16"), dict(quantize="int8", cpu_kernel="plain"), {}):
        other = fastbark.Bark.from_pretrained(hub_dir, **options)
        assert other.semantic_model.decode_step is None and other.coarse_model.decode_step is None, options


@torch.inference_mode()
def test_c_step_checks_its_inputs_and_follows_replaced_weights():
    model = quantised_model(64, 4, False)
    use_int8_decode(model)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="one row per input row"):
        model.decode_step(torch.randn(3, 1, 64), cache, 0)
    with pytest.raises(ValueError, match="one float32 position per row"):
        model.decode_step(torch.randn(2, 1, 64, dtype=torch.float64), cache, 0)
    x = torch.randn(2, 1, 64)
    x_copy = x.clone()
    before = model.decode_step(x, cache, 0)
    norm = model.layers[1].layernorm_2
    norm.weight.data = norm.weight.data * 2  # a new tensor: the step must read its new address
    after = model.decode_step(x, cache, 0)
    norm.weight.data = norm.weight.data / 2
    assert not torch.equal(after, before) and torch.equal(model.decode_step(x, cache, 0), before)
    assert torch.equal(x, x_copy)  # the caller's input is left as it was
