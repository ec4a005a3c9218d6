"""Stage 2: semantic tokens -> EnCodec codebooks 0-1 (75 Hz), in sliding windows of the causal coarse GPT.

Coarse ids are 10 000 + codebook * 1024 + code, interleaved c0, c1, c0, c1, ...; each window's
prompt is [semantic context (256), infer token, last coarse tokens (<= 630)] at positions from 0.

The reference prefills every window's prompt afresh. While neither the semantic context nor the
start of the coarse history has moved (early windows, before 209 semantic / 630 coarse tokens of
history), a window's prompt is exactly the previous prompt plus the previous window's tokens, all
of which but the last are already in the KV cache: then we feed that one token instead of a
prefill of up to 887 positions. Same tokens in exact arithmetic; in floating point the cached keys
come from decode steps rather than one prefill (rounding-level differences, as between any two
kernels); the parity tests against transformers cover both kinds of window.
"""

from __future__ import annotations

import math

from typing import Sequence

import numpy as np
import torch

from ..constants import (CODEBOOK_SIZE, COARSE_INFER_TOKEN, COARSE_SEMANTIC_PAD_TOKEN, MAX_COARSE_INPUT,
                         N_COARSE_CODEBOOKS, SEMANTIC_TO_COARSE_RATIO, SEMANTIC_VOCAB_SIZE)
from ..models.gpt import CausalGPT
from ..options import CoarseOptions
from ..voices import Voice
from .decoding import check_finite, decode_one_token, prefill
from .progress import ProgressCallback, Reporter
from .sampling import RowStreams, Stream, choose, is_greedy

# codebook k of a coarse frame is stored as id SEMANTIC_VOCAB_SIZE + k * CODEBOOK_SIZE + code
CODEBOOK_OFFSETS = SEMANTIC_VOCAB_SIZE + CODEBOOK_SIZE * np.arange(N_COARSE_CODEBOOKS)[:, None]  # (2, 1)


def n_coarse_steps(n_semantic: int) -> int:
    """Coarse tokens generated for n semantic tokens: a whole number of frames."""
    return int(math.floor(n_semantic * SEMANTIC_TO_COARSE_RATIO / N_COARSE_CODEBOOKS)) * N_COARSE_CODEBOOKS


def voice_histories(voice: Voice | None, max_coarse_history: int) -> tuple[np.ndarray, np.ndarray]:
    """The voice's semantic and flat coarse histories, trimmed to stay time-aligned."""
    if voice is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    semantic = voice.semantic_prompt
    coarse = (voice.coarse_prompt + CODEBOOK_OFFSETS).T.reshape(-1)  # (2, m) -> (m, 2) -> (2m,) interleaved
    max_semantic_history = int(math.floor(max_coarse_history / SEMANTIC_TO_COARSE_RATIO))
    n_semantic = min(max_semantic_history, len(semantic) - len(semantic) % 2,
                     int(math.floor(len(coarse) / SEMANTIC_TO_COARSE_RATIO)))
    n_coarse = int(round(n_semantic * SEMANTIC_TO_COARSE_RATIO))
    semantic = semantic[len(semantic) - n_semantic:]
    coarse = coarse[len(coarse) - n_coarse:][:-2]  # the reference drops the last two history tokens
    return semantic, coarse


@torch.inference_mode()
def generate_coarse(model: CausalGPT, semantic: list[np.ndarray], voice: Voice | None, options: CoarseOptions,
                    streams: Sequence[Stream] | None = None,
                    progress: ProgressCallback | None = None, carry_cache: bool = True) -> list[np.ndarray]:
    """Coarse codes (2, T_i) int64 in [0, 1024) for each semantic array (n_i,).

    carry_cache=False prefills every window as the reference does (the baseline of benchmarks).

    The batch moves window by window together: with one voice every row's prompt has the same
    length (semantic context padded to 256, infer token, the same number of coarse tokens), so
    no padding is needed. A row leaves the batch once its own number of steps is done.
    """
    streams = list(streams) if streams is not None else [Stream() for _ in semantic]
    device = model.position_embeds_layer.weight.device
    semantic_history, coarse_history = voice_histories(voice, options.max_coarse_history)
    semantic_in = [np.concatenate([semantic_history, s]) for s in semantic]
    n_steps = [n_coarse_steps(len(s)) for s in semantic]
    max_semantic_history = int(math.floor(options.max_coarse_history / SEMANTIC_TO_COARSE_RATIO))
    n_hist, total_steps = len(coarse_history), max(n_steps, default=0)

    # (B, history + new tokens): every row's coarse ids; rows write only their own n_steps
    coarse = torch.empty(len(semantic), n_hist + total_steps, dtype=torch.long, device=device)
    coarse[:, :n_hist] = torch.from_numpy(coarse_history).to(device)
    emb, done, sampled = model.input_embeds_layer, 0, not is_greedy(options.temperature)
    cache, cache_rows, cache_starts, pos = None, [], None, 0
    bar = Reporter(progress, "coarse", total_steps, "token")
    while done < total_steps:
        rows = [i for i, n in enumerate(n_steps) if n > done]
        semantic_idx = len(semantic_history) + int(round(done / SEMANTIC_TO_COARSE_RATIO))
        end = n_hist + done
        starts = (max(0, semantic_idx - max_semantic_history), max(0, end - options.max_coarse_history))
        if carry_cache and cache is not None and starts == cache_starts:
            # the prompt grew by the last window's tokens only: the cache holds all but its last one
            if rows != cache_rows:  # rows that finished leave (the same bits for those that stay)
                cache = cache.select(torch.tensor([cache_rows.index(i) for i in rows], device=device))
            logits = check_finite(decode_one_token(model, coarse[rows, end - 1], cache, pos), "coarse")
            pos += 1
        else:
            contexts = []
            for i in rows:
                context = semantic_in[i][starts[0]:][:MAX_COARSE_INPUT]
                contexts.append(np.pad(context, (0, MAX_COARSE_INPUT - len(context)),
                                       constant_values=COARSE_SEMANTIC_PAD_TOKEN))
            prompt = torch.cat([torch.from_numpy(np.stack(contexts)).to(device),  # (B, 256)
                                torch.full((len(rows), 1), COARSE_INFER_TOKEN, device=device),
                                coarse[rows, starts[1]: end]], dim=1)
            cache = None  # the old cache goes first: a backend may reuse its memory for the new one
            cache = model.new_cache(len(rows))  # a fresh cache: positions restart at 0
            logits = prefill(model, emb(prompt), cache, "coarse")
            pos = prompt.shape[1]
        cache_rows, cache_starts = rows, starts
        n_window = min(options.sliding_window_len, total_steps - done)
        row_index = torch.tensor(rows, device=device)  # once per window: the steps send nothing from the host
        draws = RowStreams([streams[i] for i in rows], device)
        for step in range(n_window):
            # even steps emit codebook 0, odd steps codebook 1
            low = SEMANTIC_VOCAB_SIZE + (step % N_COARSE_CODEBOOKS) * CODEBOOK_SIZE
            scores = logits[:, low: low + CODEBOOK_SIZE]
            live = [b for b, i in enumerate(rows) if n_steps[i] > done + step]  # rows not yet past their end
            noise = draws.noise(step, CODEBOOK_SIZE) if sampled else None
            if len(live) == len(rows):
                token, _ = choose(scores, options.temperature, options.top_k, options.top_p, noise=noise)
            else:  # a row past its own end takes scratch tokens without drawing from its stream
                token = scores.argmax(-1)
                if live:
                    token[live] = choose(scores[live], options.temperature, options.top_k, options.top_p,
                                         noise=noise[live] if sampled else None)[0]
            token = token + low
            coarse[row_index, end + step] = token  # past a row's own n_steps this is scratch, cut below
            if step + 1 < n_window:
                logits = decode_one_token(model, token, cache, pos)
                pos += 1
        if sampled:  # a row drew once per step before its own end
            for i in rows:
                streams[i].draws += min(n_window, n_steps[i] - done)
        done += n_window
        bar.advance(n_window)
    flat = coarse[:, n_hist:].cpu().numpy()
    # (n_steps,) interleaved -> (T, 2) -> (2, T) codes
    return [flat[i, :n].reshape(-1, N_COARSE_CODEBOOKS).T - CODEBOOK_OFFSETS for i, n in enumerate(n_steps)]
