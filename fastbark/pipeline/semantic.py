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
from .sampling import Stream, choose

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


@torch.inference_mode()
def generate_semantic(model: CausalGPT, text_ids: list[list[int]], voice: Voices, options: SemanticOptions,
                      streams: Sequence[Stream] | None = None,
                      progress: ProgressCallback | None = None) -> list[np.ndarray]:
    """Semantic tokens (n_i,) int64 for each text, EOS excluded; text i samples from `streams[i]`.
    `voice`: one voice for all texts, or a list with one per text."""
    streams = list(streams) if streams is not None else [Stream() for _ in text_ids]
    embeds = semantic_prompt(model, text_ids, voice)
    batch = len(text_ids)
    cache = model.new_cache(batch)
    logits = prefill(model, embeds, cache)
    pos = embeds.shape[1]
    # candidates: the semantic vocabulary, plus EOS when early stop is allowed
    n_candidates = SEMANTIC_VOCAB_SIZE + 1 if options.allow_early_stop else SEMANTIC_VOCAB_SIZE
    want_probs = options.allow_early_stop and options.min_eos_p is not None
    tokens = torch.zeros(batch, options.max_tokens, dtype=torch.long, device=embeds.device)
    lengths = [options.max_tokens] * batch
    rows = list(range(batch))  # the texts still generating, in cache order
    bar = Reporter(progress, "semantic", options.max_tokens, "token")
    for step in range(options.max_tokens):
        token, probs = choose(logits[:, :n_candidates], options.temperature, options.top_k, options.top_p,
                              [streams[i] for i in rows], with_probs=want_probs)
        tokens[rows, step] = token
        if options.allow_early_stop:
            stop = token == EOS
            if want_probs:
                stop |= probs[:, EOS] >= options.min_eos_p
            if stop.any():
                keep = (~stop).nonzero().flatten()
                for i in stop.nonzero().flatten().tolist():
                    lengths[rows[i]] = step
                rows = [rows[i] for i in keep.tolist()]
                if not rows:
                    break
                token, cache = token[keep], cache.select(keep)
        bar.advance()
        if step + 1 < options.max_tokens:
            logits = decode_one_token(model, token, cache, pos)
            pos += 1
    out = tokens.cpu().numpy()
    return [out[i, : lengths[i]] for i in range(batch)]
