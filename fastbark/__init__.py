"""fastbark: a fast, faithful engine for Suno's Bark text-to-speech model."""

from .constants import SAMPLE_RATE
from .engine import Bark, Generation
from .errors import BadInput, CheckpointError
from .options import CoarseOptions, FineOptions, GenerationOptions, SemanticOptions
from .voices import Voice

__all__ = ["Bark", "Generation", "GenerationOptions", "SemanticOptions", "CoarseOptions", "FineOptions", "Voice",
           "BadInput", "CheckpointError", "SAMPLE_RATE"]
__version__ = "0.1.0"
