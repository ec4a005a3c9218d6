"""Stage 2: semantic tokens -> EnCodec codebooks 0-1 (75 Hz), in sliding windows of the causal coarse GPT.

Coarse ids are 10 000 + codebook * 1024 + code, interleaved c0, c1, c0, c1, ...; each window
starts a fresh KV cache over [semantic context (256), infer token, last coarse tokens (<= 630)].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..constants import (CODEBOOK_SIZE, COARSE_INFER_TOKEN, COARSE_SEMANTIC_PAD_TOKEN, MAX_COARSE_INPUT,
                         N_COARSE_CODEBOOKS, SEMANTIC_TO_COARSE_RATIO, SEMANTIC_VOCAB_SIZE)
from ..models.gpt import CausalGPT
from ..options import CoarseOptions
from ..sampling import choose
from ..voices import Voice
from .semantic import decode_one_token, prefill

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
def generate_coarse(model: CausalGPT, semantic: np.ndarray, voice: Voice | None, options: CoarseOptions,
                    generator: torch.Generator | None = None, progress: bool = False) -> np.ndarray:
    """Coarse codes (2, T) int64 in [0, 1024) for semantic tokens (n,)."""
    device = model.position_embeds_layer.weight.device
    semantic_history, coarse_history = voice_histories(voice, options.max_coarse_history)
    semantic_in = np.concatenate([semantic_history, semantic])
    n_steps = n_coarse_steps(len(semantic))
    max_semantic_history = int(math.floor(options.max_coarse_history / SEMANTIC_TO_COARSE_RATIO))

    coarse = torch.empty(len(coarse_history) + n_steps, dtype=torch.long, device=device)  # history + new tokens
    coarse[: len(coarse_history)] = torch.from_numpy(coarse_history)
    n_hist, done = len(coarse_history), 0
    cache = model.new_cache(batch=1)
    emb = model.input_embeds_layer
    with tqdm(total=n_steps, desc="coarse", unit="tok", disable=not progress, leave=False) as bar:
        while done < n_steps:
            semantic_idx = len(semantic_history) + int(round(done / SEMANTIC_TO_COARSE_RATIO))
            context = semantic_in[max(0, semantic_idx - max_semantic_history):][:MAX_COARSE_INPUT]
            context = np.pad(context, (0, MAX_COARSE_INPUT - len(context)), constant_values=COARSE_SEMANTIC_PAD_TOKEN)
            end = n_hist + done
            prompt = torch.cat([torch.from_numpy(context).to(device),
                                torch.tensor([COARSE_INFER_TOKEN], device=device),
                                coarse[max(0, end - options.max_coarse_history): end]])
            logits = prefill(model, emb(prompt)[None], cache)  # fresh cache: positions restart at 0
            pos = len(prompt)
            n_window = min(options.sliding_window_len, n_steps - done)
            for step in range(n_window):
                # even steps emit codebook 0, odd steps codebook 1
                low = SEMANTIC_VOCAB_SIZE + (step % N_COARSE_CODEBOOKS) * CODEBOOK_SIZE
                token, _ = choose(logits[:, low: low + CODEBOOK_SIZE], options.temperature, options.top_k,
                                  options.top_p, generator)
                token = token + low
                coarse[n_hist + done] = token[0]
                done += 1
                if step + 1 < n_window:
                    logits = decode_one_token(model, token, cache, pos)
                    pos += 1
            bar.update(n_window)
    codes = coarse[n_hist:].cpu().numpy().reshape(-1, N_COARSE_CODEBOOKS).T  # (n_steps,) -> (T, 2) -> (2, T)
    return codes - CODEBOOK_OFFSETS
