"""Generation options: frozen dataclasses, validated when made. Defaults are those of Suno's original code."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import (CONTEXT_LEN, DEFAULT_COARSE_TEMPERATURE, DEFAULT_FINE_TEMPERATURE, DEFAULT_MIN_EOS_P,
                        DEFAULT_SEMANTIC_TEMPERATURE, MAX_COARSE_HISTORY, MAX_COARSE_INPUT, MAX_SEMANTIC_TOKENS,
                        SLIDING_WINDOW_LEN)
from .errors import BadInput
from .sampling import check_sampling


@dataclass(frozen=True)
class SemanticOptions:
    temperature: float | None = DEFAULT_SEMANTIC_TEMPERATURE
    top_k: int | None = None
    top_p: float | None = None
    min_eos_p: float | None = DEFAULT_MIN_EOS_P  # stop once p(EOS) >= this; None: only when EOS is chosen
    max_tokens: int = MAX_SEMANTIC_TOKENS
    allow_early_stop: bool = True  # False: EOS is never chosen, always max_tokens tokens

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)
        if self.min_eos_p is not None and not (isinstance(self.min_eos_p, (int, float)) and 0 < self.min_eos_p <= 1):
            raise BadInput(f"min_eos_p must be in (0, 1] or None, got {self.min_eos_p!r}")
        if not (isinstance(self.max_tokens, int) and 1 <= self.max_tokens <= MAX_SEMANTIC_TOKENS):
            raise BadInput(f"max semantic tokens must be an integer in 1..{MAX_SEMANTIC_TOKENS}, "
                           f"got {self.max_tokens!r}")


@dataclass(frozen=True)
class CoarseOptions:
    temperature: float | None = DEFAULT_COARSE_TEMPERATURE
    top_k: int | None = None
    top_p: float | None = None
    max_coarse_history: int = MAX_COARSE_HISTORY
    sliding_window_len: int = SLIDING_WINDOW_LEN

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)
        if not (isinstance(self.max_coarse_history, int) and 60 <= self.max_coarse_history <= MAX_COARSE_HISTORY):
            raise BadInput(f"max_coarse_history must be an integer in 60..{MAX_COARSE_HISTORY}, "
                           f"got {self.max_coarse_history!r}")
        room = CONTEXT_LEN - MAX_COARSE_INPUT - self.max_coarse_history  # positions left for generation
        if not (isinstance(self.sliding_window_len, int) and 1 <= self.sliding_window_len <= room):
            raise BadInput(f"sliding_window_len must be an integer in 1..{room} with "
                           f"max_coarse_history={self.max_coarse_history}, got {self.sliding_window_len!r}")


@dataclass(frozen=True)
class FineOptions:
    temperature: float | None = DEFAULT_FINE_TEMPERATURE

    def __post_init__(self):
        check_sampling(self.temperature)


@dataclass(frozen=True)
class GenerationOptions:
    """Every option of `Bark.generate`, one frozen value."""

    semantic_temperature: float | None = DEFAULT_SEMANTIC_TEMPERATURE
    coarse_temperature: float | None = DEFAULT_COARSE_TEMPERATURE
    fine_temperature: float | None = DEFAULT_FINE_TEMPERATURE
    top_k: int | None = None  # semantic and coarse stages
    top_p: float | None = None  # semantic and coarse stages
    min_eos_p: float | None = DEFAULT_MIN_EOS_P
    max_semantic_tokens: int = MAX_SEMANTIC_TOKENS
    allow_early_stop: bool = True
    max_coarse_history: int = MAX_COARSE_HISTORY
    sliding_window_len: int = SLIDING_WINDOW_LEN

    def __post_init__(self):
        self.semantic, self.coarse, self.fine  # validate now, not halfway through a generation

    @property
    def semantic(self) -> SemanticOptions:
        return SemanticOptions(self.semantic_temperature, self.top_k, self.top_p, self.min_eos_p,
                               self.max_semantic_tokens, self.allow_early_stop)

    @property
    def coarse(self) -> CoarseOptions:
        return CoarseOptions(self.coarse_temperature, self.top_k, self.top_p, self.max_coarse_history,
                             self.sliding_window_len)

    @property
    def fine(self) -> FineOptions:
        return FineOptions(self.fine_temperature)
