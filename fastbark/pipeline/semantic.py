"""Stage 1: text ids -> semantic tokens (49.9 Hz), with the causal semantic GPT over a KV cache.

A batch of texts runs together: every prompt is 257 positions long, whatever the voice, so the
batch needs no padding and its rows may have different voices; a row that reaches its end of
speech is dropped from the batch (and from the cache).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..constants import (MAX_TEXT_TOKENS, SEMANTIC_INFER_TOKEN, SEMANTIC_PAD_TOKEN, SEMANTIC_VOCAB_SIZE,
                         TEXT_ENCODING_OFFSET, TEXT_PAD_TOKEN)
from ..models.gpt import CausalGPT
from ..options import SemanticOptions
from ..voices import Voice
from .decoding import decode_one_token, prefill
from .progress import ProgressCallback, Reporter
from .sampling import RowStreams, Stream, choose, is_greedy

EOS = SEMANTIC_PAD_TOKEN


Voices = Voice | None | Sequence[Voice | None]  # one voice for every row, or one per row


def row_voices(voice, n: int) -> list[Voice | None]:
    """`voice` (one for all, or a list with one per row) as a list of n voices."""
    voices = list(voice) if isinstance(voice, (list, tuple)) else [voice] * n
    if len(voices) != n:
        raise ValueError(f"{len(voices)} voices for {n} rows")
    return voices


def semantic_prompt(model: CausalGPT, text_ids: list[list[int]], voice: Voices) -> torch.Tensor:
    """The prompt embeddings (B, 257, C): emb(text) + emb(history) for 256 positions, then emb(infer)."""
    device = model.position_embeds_layer.weight.device
    text = torch.full((len(text_ids), MAX_TEXT_TOKENS), TEXT_PAD_TOKEN, dtype=torch.long)  # (B, 256)
    history = torch.full((len(text_ids), MAX_TEXT_TOKENS), SEMANTIC_PAD_TOKEN, dtype=torch.long)  # (B, 256)
    for row, (ids, v) in enumerate(zip(text_ids, row_voices(voice, len(text_ids)))):
        text[row, : len(ids)] = torch.tensor(ids[:MAX_TEXT_TOKENS], dtype=torch.long) + TEXT_ENCODING_OFFSET
        if v is not None:
            tail = torch.from_numpy(v.semantic_prompt[-MAX_TEXT_TOKENS:])
            history[row, : len(tail)] = tail
    emb = model.input_embeds_layer
    prompt = emb(text.to(device)) + emb(history.to(device))  # (B, 256, C), summed, not concatenated
    infer = emb(torch.tensor([SEMANTIC_INFER_TOKEN], device=device)).expand(len(text_ids), 1, -1)  # (B, 1, C)
    return torch.cat([prompt, infer], dim=1)  # (B, 257, C)


# How often the host reads the end-of-speech flags: every step on the CPU (a row that ended leaves at once);
# on a GPU every 8 steps, so that the steps between run without waiting for the host. A row that ended in
# between runs on, its tokens past the end discarded: its tokens and its stream's draws are the same.
CHECK_EVERY_CPU, CHECK_EVERY_GPU = 1, 8


@torch.inference_mode()
def generate_semantic(model: CausalGPT, text_ids: list[list[int]], voice: Voices, options: SemanticOptions,
                      streams: Sequence[Stream] | None = None,
                      progress: ProgressCallback | None = None, check_every: int | None = None) -> list[np.ndarray]:
    """Semantic tokens (n_i,) int64 for each text, EOS excluded; text i samples from `streams[i]`.
    `voice`: one voice for all texts, or a list with one per text. `check_every`: steps between two reads
    of the end-of-speech flags on the host (default: `CHECK_EVERY_CPU` or `CHECK_EVERY_GPU`)."""
    streams = list(streams) if streams is not None else [Stream() for _ in text_ids]
    embeds = semantic_prompt(model, text_ids, voice)
    device, batch, n_max = embeds.device, len(text_ids), options.max_tokens
    check_every = check_every or (CHECK_EVERY_CPU if device.type == "cpu" else CHECK_EVERY_GPU)
    cache = model.new_cache(batch)
    logits = prefill(model, embeds, cache)
    pos = embeds.shape[1]
    # candidates: the semantic vocabulary, plus EOS when early stop is allowed
    n_candidates = SEMANTIC_VOCAB_SIZE + 1 if options.allow_early_stop else SEMANTIC_VOCAB_SIZE
    want_probs = options.allow_early_stop and options.min_eos_p is not None
    sampled = not is_greedy(options.temperature)
    tokens = torch.zeros(batch, n_max, dtype=torch.long, device=device)
    ends = torch.zeros(batch, n_max, dtype=torch.bool, device=device)  # text i's end of speech came at step s
    rows = torch.arange(batch, device=device)  # the texts still in the batch, in cache order
    draws = RowStreams(streams, device)
    bar = Reporter(progress, "semantic", n_max, "token")
    for step in range(n_max):
        token, probs = choose(logits[:, :n_candidates], options.temperature, options.top_k, options.top_p,
                              with_probs=want_probs, noise=draws.noise(step, n_candidates) if sampled else None)
        tokens[rows, step] = token
        if options.allow_early_stop:
            stop = token == EOS
            if want_probs:
                stop |= probs[:, EOS] >= options.min_eos_p
            ends[rows, step] = stop
            if (step + 1) % check_every == 0 or step + 1 == n_max:
                done = ends[rows].any(-1).cpu()  # the host reads the flags
                if bool(done.all()):
                    break
                if bool(done.any()):  # rows that ended leave the batch (the same bits for those that stay)
                    kept = (~done).nonzero().flatten().tolist()
                    keep = torch.tensor(kept, device=device)
                    rows, token, draws, cache = rows[keep], token[keep], draws.select(keep, kept), cache.select(keep)
        bar.advance()
        if step + 1 < n_max:
            logits = decode_one_token(model, token, cache, pos)
            pos += 1
    lengths = (~ends).long().cumprod(-1).sum(-1).tolist()  # the steps before each text's first end
    if sampled:  # a row drew once per step up to and including its end
        for stream, n in zip(streams, lengths):
            stream.draws += min(n + 1, n_max)
    out = tokens.cpu().numpy()
    return [out[i, : lengths[i]] for i in range(batch)]
