"""Stage 3: coarse codebooks 0-1 -> all 8 codebooks, with the non-causal fine GPT over 1024-frame windows."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..constants import CODEBOOK_SIZE, FINE_PAD_TOKEN, FINE_STRIDE, FINE_WINDOW, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS
from ..models.gpt import FineGPT
from ..options import FineOptions
from ..voices import Voice
from .decoding import check_finite
from .progress import ProgressCallback, Reporter
from .sampling import Stream, filter_logits, is_greedy, sample_rows


def _fine_input(coarse: np.ndarray, history: np.ndarray) -> np.ndarray:
    """(8, L): the voice's fine history, the coarse rows with rows 2-7 still to predict, then padding to
    at least one window."""
    n_history, n_frames = history.shape[1], coarse.shape[1]
    codes = np.full((N_FINE_CODEBOOKS, max(FINE_WINDOW, n_history + n_frames)), FINE_PAD_TOKEN, dtype=np.int64)
    codes[:, :n_history] = history
    codes[:N_COARSE_CODEBOOKS, n_history: n_history + n_frames] = coarse
    return codes


# Texts per fine forward pass: one, on every device. On the CPU one 1024-frame window is already a
# compute-bound batch of 1024 positions, and stacking texts only makes each elementwise op's working set
# outgrow the caches (bark-small's MLP: 1024 x 3072 float32 = 12 MB per text, against a 32 MB L3). On a GPU
# a GEMM of another number of rows may run another cuBLAS kernel, with other rounding: one text per pass
# keeps a text's numbers independent of its companions (the batch invariance the server promises).
FINE_ROWS_PER_PASS = 1


@torch.inference_mode()
def generate_fine(model: FineGPT, coarse: list[np.ndarray], voice: Voice | None, options: FineOptions,
                  streams: Sequence[Stream] | None = None,
                  progress: ProgressCallback | None = None) -> list[np.ndarray]:
    """Fine codes (8, T_i) int64 for each coarse array (2, T_i); text i samples from `streams[i]`.

    Window l of every text that has one runs together (`FINE_ROWS_PER_PASS` texts per forward pass): each
    text keeps its own windows, and samples only its own positions from its own stream, so its result does
    not depend on the other texts of the batch.
    """
    streams = list(streams) if streams is not None else [Stream() for _ in coarse]
    device = model.position_embeds_layer.weight.device
    history = voice.fine_prompt[:, -FINE_STRIDE:] if voice is not None else np.zeros((N_FINE_CODEBOOKS, 0), np.int64)
    n_history = history.shape[1]
    inputs = [torch.from_numpy(_fine_input(c, history).T.copy()).to(device) for c in coarse]  # (8, L) -> (L, 8)
    n_frames = [c.shape[1] for c in coarse]
    n_loops = [max(0, math.ceil((n - (FINE_WINDOW - n_history)) / FINE_STRIDE)) + 1 if n else 0 for n in n_frames]
    bar = Reporter(progress, "fine", max(n_loops, default=0), "window")
    for loop in range(max(n_loops, default=0)):
        rows = [i for i, n in enumerate(n_loops) if n > loop]
        for first in range(0, len(rows), FINE_ROWS_PER_PASS):
            _window(model, inputs, rows[first: first + FINE_ROWS_PER_PASS], loop * FINE_STRIDE, n_history, options,
                    streams)
        bar.advance()
    # (L, 8) -> (8, T): drop the history and the padding
    return [x[n_history: n_history + n].T.cpu().numpy() for x, n in zip(inputs, n_frames)]


def _window(model: FineGPT, inputs: list[torch.Tensor], rows: list[int], offset: int, n_history: int,
            options: FineOptions, streams: Sequence[Stream]) -> None:
    """Predicts codebooks 2-7 of the window at `offset` of each text in `rows`, in place in `inputs`."""
    starts, rels = [], []
    for i in rows:
        total = inputs[i].shape[0]
        start = min(offset, total - FINE_WINDOW)
        starts.append(start)
        rels.append(min(n_history + offset, total - FINE_STRIDE) - start)
    window = torch.stack([inputs[i][s: s + FINE_WINDOW] for i, s in zip(rows, starts)])  # (B, 1024, 8)
    rel = min(rels)  # logits from the earliest position any row still predicts
    for k in range(N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS):
        logits = model.logits(window, k, start=rel)[..., :CODEBOOK_SIZE]  # (B, 1024 - rel, 1024)
        if k == N_COARSE_CODEBOOKS:  # the window's first pass
            check_finite(logits, "fine")
        if is_greedy(options.temperature):
            tokens = logits.argmax(-1)  # (B, 1024 - rel)
            for b, r in enumerate(rels):  # each row keeps what it has already predicted before its own rel
                window[b, r:, k] = tokens[b, r - rel:]
        else:
            scores = filter_logits(logits, options.temperature)  # (B, 1024 - rel, 1024)
            for b, (i, r) in enumerate(zip(rows, rels)):  # a row samples its own positions only
                window[b, r:, k] = sample_rows(scores[b, r - rel:], streams[i])
    for b, (i, s) in enumerate(zip(rows, starts)):
        inputs[i][s: s + FINE_WINDOW] = window[b]
