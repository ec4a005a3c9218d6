"""Stage 3: coarse codebooks 0-1 -> all 8 codebooks, with the non-causal fine GPT over 1024-frame windows."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..constants import CODEBOOK_SIZE, FINE_PAD_TOKEN, FINE_STRIDE, FINE_WINDOW, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS
from ..models.gpt import FineGPT
from ..options import FineOptions
from ..sampling import choose
from ..voices import Voice


@torch.inference_mode()
def generate_fine(model: FineGPT, coarse: np.ndarray, voice: Voice | None, options: FineOptions,
                  generator: torch.Generator | None = None, progress: bool = False) -> np.ndarray:
    """Fine codes (8, T) int64 for coarse codes (2, T)."""
    device = model.lm_heads[0].weight.device
    n_frames = coarse.shape[1]
    if n_frames == 0:
        return np.zeros((N_FINE_CODEBOOKS, 0), np.int64)
    history = voice.fine_prompt[:, -FINE_STRIDE:] if voice is not None else np.zeros((N_FINE_CODEBOOKS, 0), np.int64)
    n_history = history.shape[1]
    # (8, n_history + T): the voice's fine history, then the coarse rows with rows 2-7 still to predict
    codes = np.full((N_FINE_CODEBOOKS, max(FINE_WINDOW, n_history + n_frames)), FINE_PAD_TOKEN, dtype=np.int64)
    codes[:, :n_history] = history
    codes[:N_COARSE_CODEBOOKS, n_history: n_history + n_frames] = coarse
    total = codes.shape[1]
    buffer = torch.from_numpy(codes.T.copy()).to(device)[None]  # (8, L) -> (1, L, 8)

    n_loops = max(0, math.ceil((n_frames - (FINE_WINDOW - n_history)) / FINE_STRIDE)) + 1
    with tqdm(total=n_loops, desc="fine", unit="win", disable=not progress, leave=False) as bar:
        for loop in range(n_loops):
            start = min(loop * FINE_STRIDE, total - FINE_WINDOW)
            fill_from = min(n_history + loop * FINE_STRIDE, total - FINE_STRIDE)
            rel = fill_from - start  # the window's first position still to predict
            window = buffer[:, start: start + FINE_WINDOW]  # a view: predictions land in `buffer`
            for k in range(N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS):
                logits = model(window, k, start=rel)[..., :CODEBOOK_SIZE]  # (1, 1024 - rel, 1024)
                tokens, _ = choose(logits.reshape(-1, CODEBOOK_SIZE), options.temperature, generator=generator)
                window[0, rel:, k] = tokens
            bar.update()
    return buffer[0, n_history: n_history + n_frames].T.cpu().numpy()  # (T, 8) -> (8, T)
