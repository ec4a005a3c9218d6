"""Choosing the next token from logits: greedy, or sampled after temperature, top-k and top-p.

The order is the reference's (transformers' warpers): temperature, then top-k, then top-p on the
tempered distribution. Temperature 0 (or None) means greedy.

Sampling is counter-based: every row has a `Stream` (its seed and a count of its draws), and draw k
of a stream is the Gumbel-max race `argmax(scores + G)`, where the noise G of token t is a hash of
(seed, k, t). A row's draw is then a pure function of its logits, its seed and its draw count:
the same alone or in any batch, on any device, with no generator object and nothing that needs
the host (the hash is integer arithmetic on tensors, so a CUDA graph can capture it).
"""

from __future__ import annotations

from typing import Sequence

import torch

# SplitMix64's constants (Steele, Lea and Flood 2014), as signed int64: torch has no uint64 arithmetic,
# and int64 products wrap modulo 2**64 like unsigned ones.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
UNIFORM_BITS = 24  # a float32 holds 24-bit integers exactly: u = (h's top 24 bits + 0.5) / 2**24 in (0, 1)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negative numbers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors: a bijection of 64-bit words that scatters every input bit."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def draw_keys(seeds: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """The key of draw `draws[i]` of the stream seeded `seeds[i]` (int64 tensors of one shape)."""
    return mix64(mix64(seeds) + draws * _GOLDEN)


def gumbel_noise(keys: torch.Tensor, n: int) -> torch.Tensor:
    """Gumbel(0, 1) noise (len(keys), n) float32: entry (i, t) is a function of keys[i] and t only."""
    index = torch.arange(n, dtype=torch.int64, device=keys.device)
    bits = _shift_right(mix64(keys[:, None] + index[None, :] * _GOLDEN), 64 - UNIFORM_BITS)  # (B, n)
    u = (bits.float() + 0.5) * 2.0 ** -UNIFORM_BITS
    return -torch.log(-torch.log(u))


def _as_int64(seed: int) -> int:
    return seed - (1 << 64) if seed >= 1 << 63 else seed


class Stream:
    """One row's random stream: a seed (0..2**64-1) and how many draws it has made. Without a seed, one
    is drawn from torch's global generator, so `torch.manual_seed` still makes unseeded runs repeat."""

    def __init__(self, seed: int | None = None):
        if seed is None:
            seed = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
        self.seed, self.draws = int(seed), 0

    def take(self) -> tuple[int, int]:
        """(seed as int64, draw index) for the next draw, which is counted."""
        self.draws += 1
        return _as_int64(self.seed), self.draws - 1


def next_keys(streams: Sequence[Stream], device) -> torch.Tensor:
    """The keys (B,) of each stream's next draw; each stream counts one draw."""
    seeds, draws = zip(*(s.take() for s in streams))
    return draw_keys(torch.tensor(seeds, dtype=torch.int64, device=device),
                     torch.tensor(draws, dtype=torch.int64, device=device))


class RowStreams:
    """The streams of a batch's rows, their seeds and draw counts held on the device: the noise of every
    row's draw at step s of a stage is made on the device, with nothing sent from the host each step (a
    CUDA step never waits for the host), `AHEAD` steps at a time (one set of hashing kernels per 8 steps,
    not per step). Row i's draw at step s is its stream's draw `draws + s`, as if drawn one by one; the
    stage counts the draws each stream made."""

    AHEAD = 8

    def __init__(self, streams: Sequence[Stream], device, seeds: torch.Tensor | None = None,
                 base: torch.Tensor | None = None, ahead: tuple[int, torch.Tensor] | None = None):
        self.streams = list(streams)
        if seeds is None:
            seeds = torch.tensor([_as_int64(s.seed) for s in self.streams], dtype=torch.int64, device=device)
            base = torch.tensor([s.draws for s in self.streams], dtype=torch.int64, device=device)
        self.seeds, self.base = seeds, base  # (B,) each
        self._ahead = ahead  # (first step, noise (B, AHEAD, n)) of the draws made ahead

    def noise(self, step: int, n: int) -> torch.Tensor:
        """The Gumbel noise (B, n) of every row's draw at `step` over n tokens."""
        if self._ahead is None or not 0 <= step - self._ahead[0] < self.AHEAD or self._ahead[1].shape[-1] != n:
            steps = torch.arange(step, step + self.AHEAD, dtype=torch.int64, device=self.seeds.device)
            keys = draw_keys(self.seeds[:, None], self.base[:, None] + steps)  # (B, AHEAD)
            noise = gumbel_noise(keys.flatten(), n).view(len(keys), self.AHEAD, n)  # (B * AHEAD, n) -> (B, AHEAD, n)
            self._ahead = step, noise
        first, noise = self._ahead
        return noise[:, step - first]

    def select(self, rows: torch.Tensor, kept: list[int]) -> "RowStreams":
        """The rows `rows` (a device index), whose positions in this batch are `kept`."""
        ahead = (self._ahead[0], self._ahead[1][rows]) if self._ahead is not None else None
        return RowStreams([self.streams[i] for i in kept], None, self.seeds[rows], self.base[rows], ahead)


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
           top_p: float | None = None, streams: Sequence[Stream] | None = None,
           with_probs: bool = False, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pick one token per row of logits (B, V). Returns (tokens (B,), probabilities (B, V) or None).

    Sampling draws row i from `streams[i]` (None: a fresh unseeded stream per row), or with the Gumbel
    noise `noise[i]` of its draw (`RowStreams.noise`): its noise depends on its own stream only, so a row
    draws the same alone as in any batch. The probabilities are
    those of the distribution the token was drawn from (greedy: the plain softmax of the logits,
    computed only when `with_probs`); the semantic stage reads the end-of-speech probability from them.
    """
    if is_greedy(temperature):
        return logits.argmax(-1), (logits.float().softmax(-1) if with_probs else None)
    scores = filter_logits(logits, temperature, top_k, top_p)  # (B, V), -inf where filtered out
    if noise is None:
        keys = next_keys(streams if streams is not None else [Stream() for _ in range(len(scores))], scores.device)
        noise = gumbel_noise(keys, scores.shape[-1])
    tokens = (scores + noise).argmax(-1)
    return tokens, (scores.softmax(-1) if with_probs else None)


def sample_rows(scores: torch.Tensor, stream: Stream) -> torch.Tensor:
    """One token for each row of tempered scores (N, V), all from one draw of one stream (the fine stage:
    one text's positions)."""
    n, vocab = scores.shape
    noise = gumbel_noise(next_keys([stream], scores.device), n * vocab).view(n, vocab)  # (1, N*V) -> (N, V)
    return (scores + noise).argmax(-1)
