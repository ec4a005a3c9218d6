"""Choosing the next token from logits: greedy, or sampled after temperature, top-k and top-p.

The order is the reference's (transformers' warpers): temperature, then top-k, then top-p on the
tempered distribution. Temperature 0 (or None) means greedy.
"""

from __future__ import annotations

from typing import Sequence

import torch


def is_greedy(temperature: float | None) -> bool:
    return temperature is None or temperature == 0


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Scale by 1/temperature and set every token outside top-k / top-p to -inf. logits (..., V)."""
    logits = logits.float() / float(temperature)  # a Python int of any size, a numpy float: one float
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, temperature: float | None, top_k: int | None = None,
           top_p: float | None = None, generators: Sequence[torch.Generator | None] | None = None,
           with_probs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick one token per row of logits (B, V). Returns (tokens (B,), probabilities (B, V) or None).

    Sampling draws row i from `generators[i]` (None: torch's global stream), one row at a time, so a
    row's draw depends on its own stream only: the same alone as in any batch. The probabilities are
    those of the distribution the token was drawn from (greedy: the plain softmax of the logits,
    computed only when `with_probs`); the semantic stage reads the end-of-speech probability from them.
    """
    if is_greedy(temperature):
        return logits.argmax(-1), (logits.float().softmax(-1) if with_probs else None)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    generators = generators if generators is not None else [None] * len(probs)
    tokens = torch.cat([torch.multinomial(row[None], 1, generator=g)[0] for row, g in zip(probs, generators)])
    return tokens, probs


def sample_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token for each row of probs (N, V), all from one stream (the fine stage: one text's positions)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
