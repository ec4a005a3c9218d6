"""fastbark: a fast, faithful engine for Suno's Bark text-to-speech model."""

from .constants import SAMPLE_RATE
from .engine import Bark
from .errors import BadInput, CheckpointError
from .backends import BackendReport
from .options import (CloneOptions, CoarseOptions, EngineOptions, FineOptions, GenerationOptions, LongFormOptions,
                      SemanticOptions)
from .pipeline.progress import Progress
from .results import AudioChunk, Generation, Segment
from .voices import Voice

__all__ = ["Bark", "Generation", "Segment", "AudioChunk", "EngineOptions", "GenerationOptions", "LongFormOptions",
           "SemanticOptions", "CoarseOptions", "FineOptions", "CloneOptions", "Voice", "Progress", "BackendReport", "BadInput",
           "CheckpointError", "SAMPLE_RATE"]
__version__ = "0.1.0"
