"""The one-call decode step (backends/cpu/decode_step.py, native/decode_step.c): int8, bfloat16 and float32,
and the measured choice between it and the blocks (choice.py)."""

import shutil

import pytest
import torch

import fastbark
from fastbark.models.gpt import CausalGPT, GPTConfig
from fastbark.backends.cpu.int4 import Int4Linear
from fastbark.backends.cpu.int8 import Int8Linear, int8_kernels, quantize_rows_native
from fastbark.backends.cpu.linears import GemvLinear
from fastbark.backends.cpu import CpuBackend, choice
from fastbark.backends.cpu.choice import ChoiceCache
from fastbark.backends.cpu.decode_step import BF16, F32, INT4, INT8, FusedDecodeStep, decode_step_works, fused_decode_step

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
    model = float_model(n_embd, n_head, bias, seed)
    model.swap_linears(Int8Linear)
    return model


def use_decode_step(model: CausalGPT) -> bool:
    """Give `model` the C step through its seam, where it works here."""
    step = fused_decode_step(model)
    model.use_kernels(decode_step=step)
    return step is not None


def fast_model(mode: str, n_embd: int, n_head: int, bias: bool) -> CausalGPT:
    if mode == "float32":  # the C kernel's layers: their prefills and heads keep a row's bits in any batch too
        model = float_model(n_embd, n_head, bias)
        model.swap_linears(GemvLinear)
        return model
    if mode == "int4":
        model = float_model(n_embd, n_head, bias)
        model.swap_linears(Int4Linear)
        return model
    return quantised_model(n_embd, n_head, bias) if mode == "int8" else float_model(n_embd, n_head, bias).bfloat16()


FORMATS = {"int8": INT8, "bfloat16": BF16, "float32": F32, "int4": INT4}


def decode(model: CausalGPT, prompt: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Prefill `prompt` (B, P, C), then decode `tokens` (B, S): the logits of every step (B, S, V)."""
    cache = model.new_cache(prompt.shape[0])
    model(prompt, cache, 0)
    steps = [model(model.input_embeds_layer(tokens[:, i])[:, None], cache, prompt.shape[1] + i)
             for i in range(tokens.shape[1])]
    return torch.stack(steps, 1), cache


@pytest.mark.parametrize("mode", ["int8", "bfloat16", "int4"])
@pytest.mark.parametrize("n_embd, n_head, bias", [(64, 4, False), (40, 2, True), (768, 12, False)])
@torch.inference_mode()
def test_c_step_is_as_faithful_as_the_python_step(mode, n_embd, n_head, bias):
    """Against the float32 model, the C step errs no more than the block-by-block step of the same mode.
    int8: the same int8 arithmetic, but the C LayerNorm sums in another order, so an int8 rounding may
    flip now and then (at 768 wide, that moves the logits by ~1.5% of their range). bfloat16: the same
    bfloat16 operands, but float32 activations in between, so the C step is the more faithful one.
    hd = 20 and n_embd = 40 leave tails in every vector loop."""
    if not decode_step_works(FORMATS[mode]):
        pytest.skip(f"no C decode step for {mode} on this machine")
    prompt, tokens = torch.randn(2, 9, n_embd), torch.randint(0, 50, (2, 6))
    reference, _ = decode(float_model(n_embd, n_head, bias), prompt, tokens)
    model = fast_model(mode, n_embd, n_head, bias)
    prompt = prompt.to(model.position_embeds_layer.weight.dtype)
    python, python_cache = decode(model, prompt, tokens)
    assert use_decode_step(model) and isinstance(model.decode_step, FusedDecodeStep)
    c, cache = decode(model, prompt, tokens)

    def error(x):
        return ((x.float() - reference).abs().max() / reference.abs().max()).item()
    assert 0 < error(c) <= 1.25 * error(python)
    apart = 0.5 if mode == "int8" else 1.5  # bfloat16: the Python step's own rounding is most of the gap
    assert ((c.float() - python.float()).abs().max() / reference.abs().max()).item() <= apart * error(python)
    assert (c.argmax(-1) == python.argmax(-1)).float().mean() >= 0.9
    assert torch.equal(cache.k[:, :, :, :9], python_cache.k[:, :, :, :9])  # the prefill's positions are untouched
    written = slice(9, 15)  # and the decode steps wrote theirs
    assert (cache.v[:, :, :, written].float() - python_cache.v[:, :, :, written].float()).abs().max() <= \
        0.1 * python_cache.v[:, :, :, written].float().abs().max()


@pytest.mark.parametrize("n_embd, n_head, bias", [(64, 4, False), (40, 2, True), (768, 12, False)])
@pytest.mark.parametrize("prompt_length", [9, 37])
@torch.inference_mode()
def test_float32_c_step_is_the_python_step_up_to_rounding(n_embd, n_head, bias, prompt_length):
    """The exact mode's step: the C kernel's products, LayerNorm, attention and GELU in C; the logits within
    float32 rounding of the blocks', the same greedy tokens, and the cache written alike. A prompt of 37: the
    steps attend to 38-43 keys, whole blocks of 8 and 16 keys (the vector loops') and tails of every length."""
    if not decode_step_works(F32):
        pytest.skip("no C decode step on this machine")
    prompt, tokens = torch.randn(2, prompt_length, n_embd), torch.randint(0, 50, (2, 6))
    model = float_model(n_embd, n_head, bias)
    python, python_cache = decode(model, prompt, tokens)
    assert use_decode_step(model) and isinstance(model.decode_step, FusedDecodeStep)
    c, cache = decode(model, prompt, tokens)
    assert 0 < ((c - python).abs().max() / python.abs().max()).item() <= 1e-5
    assert torch.equal(c.argmax(-1), python.argmax(-1))
    for got, want in ((cache.k, python_cache.k), (cache.v, python_cache.v)):
        end = prompt_length + 6
        assert ((got[:, :, :, :end] - want[:, :, :, :end]).abs().max() / want[:, :, :, :end].abs().max()).item() <= 1e-5


@pytest.mark.parametrize("mode", ["int8", "bfloat16", "float32", "int4"])
@torch.inference_mode()
def test_c_step_rows_do_not_depend_on_batch_or_threads(mode):
    model = fast_model(mode, 64, 4, True)
    if not use_decode_step(model):
        pytest.skip(f"no C decode step for {mode} on this machine")
    prompt, tokens = torch.randn(5, 29, 64).to(model.position_embeds_layer.weight.dtype), torch.randint(0, 50, (5, 4))
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


def test_engine_uses_the_c_step_in_the_fast_modes(hub_dir):
    bf16 = decode_step_works(BF16)
    for options, expected in ((dict(quantize="int8", cpu_kernel="c"), True),
                              (dict(quantize="int8", dtype="bfloat16", cpu_kernel="c"), True),
                              (dict(dtype="bfloat16"), bf16), (dict(cpu_kernel="c"), True),
                              (dict(quantize="int8", cpu_kernel="plain"), False), (dict(cpu_kernel="onednn"), False),
                              (dict(dtype="bfloat16", cpu_kernel="onednn"), False)):
        tts = fastbark.Bark.from_pretrained(hub_dir, **options)
        for name, model in (("semantic", tts.semantic_model), ("coarse", tts.coarse_model)):
            assert isinstance(model.decode_step, FusedDecodeStep) == expected, options
            assert (tts.backend.models[name].decode_step == "fused-c") == expected, options
        if options == dict(dtype="bfloat16") and bf16:  # the step leaves the head to oneDNN where it packs bfloat16,
            # unless its long products measured faster as float32 GEMMs
            from fastbark.backends.cpu.linears import packing_available
            head = "PackedLinear" if packing_available(torch.bfloat16) else "Linear"
            assert type(tts.semantic_model.lm_head).__name__ in (head, "Bf16ViaFloat32Linear")
        # the quantised modes' step keeps its caches in int8; the exact mode's stay float32
        quantised_step = expected and "quantize" in options
        for name, model in (("semantic", tts.semantic_model), ("coarse", tts.coarse_model)):
            cache = model.new_cache(1, 4)
            assert cache.k.dtype == (torch.int8 if quantised_step else model.position_embeds_layer.weight.dtype)
            assert (cache.k_scale is not None) == quantised_step, options
            assert (tts.backend.models[name].kv_cache == "int8") == quantised_step, options
            assert ("KV cache int8" in str(tts.backend)) == quantised_step, options
            assert (model.cache_quantize is quantize_rows_native) == quantised_step, options  # rounded in C


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_an_int8_cache_rounded_in_c_holds_quantize_rows_bits(dtype):
    """The CPU backend's int8 caches round what they store in C (int8.py's quantize_rows_native): a prefill's and a
    block step's writes, strided views of q, k, v included, hold quantize_rows' integers and scales."""
    if int8_kernels() is None:
        pytest.skip("no C int8 kernels here")
    model = quantised_model(64, 4, True).to(dtype)
    prompt, token = torch.randn(3, 37, 64).to(dtype), torch.randint(0, 50, (3,))
    caches = []
    for quantize in (None, quantize_rows_native):
        model.use_kernels(cache_dtype=torch.int8, cache_quantize=quantize)
        cache = model.new_cache(3)
        model(prompt, cache, 0)
        model(model.input_embeds_layer(token)[:, None], cache, 37)
        caches.append(cache)
    assert caches[1].quantize is quantize_rows_native
    assert torch.isfinite(caches[0].k_scale[:, :, :, :38]).all()  # a sane model: rows holding NaN are not compared
    for got, want in zip(caches[1].layer(1)[:4], caches[0].layer(1)[:4]):
        assert torch.equal(got[:, :, :38], want[:, :, :38])


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8])
@pytest.mark.parametrize("mode", ["int8", "int4"])
@torch.inference_mode()
def test_a_rounded_cache_costs_the_quantised_step_little(mode, cache_dtype):
    """The quantised modes' caches in bfloat16 or int8 (the default: a scale per position and head): the C step
    reads them as the blocks do (in float32, from the rounded keys and values), the blocks and the C step agree over
    them, and against the float32 model the logits err no more than with float32 caches, by a margin far under the
    int8 products' own error."""
    if not decode_step_works(FORMATS[mode]):
        pytest.skip(f"no C decode step for {mode} on this machine")
    prompt, tokens = torch.randn(2, 21, 64), torch.randint(0, 50, (2, 12))  # 21-32 positions: blocks of 8 and tails
    reference, _ = decode(float_model(64, 4, True), prompt, tokens)

    def error(x):
        return ((x.float() - reference).abs().max() / reference.abs().max()).item()
    model = fast_model(mode, 64, 4, True)
    float32_cache, _ = decode(model, prompt, tokens)
    model.use_kernels(cache_dtype=cache_dtype)
    blocks, blocks_cache = decode(model, prompt, tokens)  # the blocks read the rounded cache in float32
    assert blocks_cache.k.dtype == cache_dtype
    assert use_decode_step(model)
    model.use_kernels(decode_step=model.decode_step, cache_dtype=cache_dtype)
    c, cache = decode(model, prompt, tokens)
    assert cache.k.dtype == cache_dtype
    assert ((c - blocks).abs().max() / reference.abs().max()).item() <= 0.5 * error(float32_cache)
    assert error(c) <= 1.25 * error(float32_cache) and error(blocks) <= 1.25 * error(float32_cache)
    for written, want in zip(cache.layer(0)[:4], blocks_cache.layer(0)[:4]):  # the prefill wrote both alike (int8:
        # with their scales)
        assert (written is None and want is None) or torch.equal(written[:, :, :21], want[:, :, :21])
    if cache_dtype == torch.int8:  # the step rounds each new key and value as the blocks do: the same integers, or
        # one apart where the C step's own sums moved a value across a rounding boundary
        for written, want in zip(cache.layer(1)[:2], blocks_cache.layer(1)[:2]):
            assert (written[:, :, 21:33].float() - want[:, :, 21:33].float()).abs().max() <= 1


@torch.inference_mode()
def test_c_step_checks_its_inputs_and_follows_replaced_weights():
    model = quantised_model(64, 4, False)
    use_decode_step(model)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="one row per input row"):
        model.decode_step(torch.randn(3, 1, 64), cache, 0)
    with pytest.raises(ValueError, match="one position per row"):
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


@pytest.mark.parametrize("faster", ["fused-c", "blocks"])
@pytest.mark.parametrize("options", [{}, dict(quantize="int8"), dict(quantize="int4")])
def test_the_step_measured_faster_runs(hub_dir, tmp_path, monkeypatch, faster, options):
    """cpu_kernel="auto": the one-call step runs only where a whole step through it measured faster than the
    blocks (here the timer is told which is faster); the choice is reported and cached."""
    if not decode_step_works({None: F32, "int8": INT8, "int4": INT4}[options.get("quantize")]):
        pytest.skip("no C decode step on this machine")
    timed = []

    def step_ms(model, cache):
        timed.append(cache.k.shape[1])
        return 1.0 if (model.decode_step is not None) == (faster == "fused-c") else 5.0
    monkeypatch.setattr(choice, "step_ms", step_ms)
    cache = ChoiceCache(tmp_path, ["a machine"])
    monkeypatch.setattr(CpuBackend, "choice_cache", lambda self: cache)
    tts = fastbark.Bark.from_pretrained(hub_dir, **options)
    assert timed
    for name, model in (("semantic", tts.semantic_model), ("coarse", tts.coarse_model)):
        assert isinstance(model.decode_step, FusedDecodeStep) == (faster == "fused-c")
        assert tts.backend.models[name].decode_step == ("fused-c" if faster == "fused-c" else "blocks")
        if faster == "fused-c" and not options:  # the layers keep one copy of their weights: the step reads it
            assert {type(m).__name__ for b in model.layers for m in b.modules() if hasattr(m, "in_features")} == \
                {"GemvLinear"}
    steps = [m for m in tts.backend.measured if m.startswith("decode step")]
    assert len(steps) == 2 and all(f": {faster} (" in m for m in steps), steps
    timed.clear()  # the same machine again: nothing is timed
    again = fastbark.Bark.from_pretrained(hub_dir, **options)
    assert not timed and [m for m in again.backend.measured if m.startswith("decode step")] == steps


class StandInStep:
    """The one-call step's part in the bfloat16 mode on CPUs without AVX512-BF16: the blocks themselves."""

    kind = "fused-c"

    def __init__(self, model):
        self.model = model

    def __call__(self, x, cache, pos):
        for i, block in enumerate(self.model.layers):
            x = block(x, cache.layer(i), pos)
        return x


@pytest.mark.parametrize("faster", ["fused-c", "blocks"])
def test_the_bfloat16_step_runs_only_where_it_measured_faster(hub_dir, tmp_path, monkeypatch, faster):
    """bfloat16 with "auto": the one-call step against the blocks on oneDNN-packed weights (plain where this CPU
    cannot pack bfloat16), the faster kept (the timer is told which); the step keeps the plain weights it reads,
    the blocks get packed ones, the head is packed either way."""
    from fastbark.backends import cpu
    from fastbark.backends.cpu.linears import packing_available
    monkeypatch.setattr(cpu, "fused_decode_step", StandInStep)

    def step_ms(model, cache):
        return 1.0 if (model.decode_step is not None) == (faster == "fused-c") else 5.0
    monkeypatch.setattr(choice, "step_ms", step_ms)
    cache = ChoiceCache(tmp_path, ["a machine"])
    monkeypatch.setattr(CpuBackend, "choice_cache", lambda self: cache)
    tts = fastbark.Bark.from_pretrained(hub_dir, dtype="bfloat16")
    packs = packing_available(torch.bfloat16)
    for name, model in (("semantic", tts.semantic_model), ("coarse", tts.coarse_model)):
        assert isinstance(model.decode_step, StandInStep) == (faster == "fused-c")
        assert tts.backend.models[name].decode_step == faster
        # layers whose shape measured faster as float32 GEMMs keep their plain weights in Bf16ViaFloat32Linear
        kinds = {type(m).__name__ for b in model.layers for m in b.modules() if hasattr(m, "in_features")}
        # (and in the step's plain weights, those whose prefills measured faster on AMX tiles, in AmxBf16Linear)
        assert kinds - {"Bf16ViaFloat32Linear"} <= ({"PackedLinear"} if faster == "blocks" and packs else
                                                    {"Linear", "AmxBf16Linear"})
        assert type(model.lm_head).__name__ in ("PackedLinear" if packs else "Linear", "Bf16ViaFloat32Linear")
    steps = [m for m in tts.backend.measured if m.startswith("decode step")]
    assert len(steps) == 2 and all(f": {faster} (" in m for m in steps), steps
