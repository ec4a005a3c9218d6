"""The server's options (fastbark serve's flags come from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from ..errors import BadInput
from ..options import check_number, check_seed
from ..voices import MAX_VOICE_BYTES


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class ServerOptions:
    """How `fastbark serve` serves (its flags come from these fields)."""

    host: str = field(default="127.0.0.1", metadata=_help("address to bind (default: this machine only)"))
    port: int = field(default=8000, metadata=_help("port to listen on"))
    max_input_chars: int = field(default=4096, metadata=_help("longest `input` accepted, in characters"))
    max_batch: int = field(default=8, metadata=_help("most chunks generated together"))
    max_wait_ms: float = field(default=20.0, metadata=_help("how long a chunk waits for company in its batch"))
    max_queue: int = field(default=64, metadata=_help("most requests queued or under way; beyond: 429"))
    max_body_bytes: int = field(default=1 << 20, metadata=_help("largest request body accepted (but uploads)"))
    max_upload_bytes: int = field(default=8 << 20, metadata=_help(
        "largest voice upload: an .npz, or an audio clip to make a voice from (15 s of 48 kHz stereo 16-bit WAV "
        "is 2.9 MB); at most 16 MB"))
    data_dir: str | None = field(default=None, metadata=_help("where uploaded voices are kept (default: none kept)"))
    api_key: str | None = field(default=None, metadata=_help(
        "require `Authorization: Bearer KEY` (also from FASTBARK_API_KEY)"))
    cors_origins: str | None = field(default=None, metadata=_help("comma list of origins allowed by CORS (off by default)"))
    voice_map: str | None = field(default=None, metadata=_help(
        "a JSON file mapping OpenAI voice names (alloy, nova, ...) to presets; overrides the built-in table"))

    def __post_init__(self):
        for name in ("port", "max_input_chars", "max_batch", "max_queue", "max_body_bytes", "max_upload_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "port" else 1):
                raise BadInput(f"{name} must be a positive integer, got {value!r}")
        if self.max_upload_bytes > MAX_VOICE_BYTES:
            raise BadInput(f"max_upload_bytes must be at most {MAX_VOICE_BYTES} (16 MB), got {self.max_upload_bytes}",
                           "max_upload_bytes")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise BadInput(f"max_wait_ms must be in 0..10000, got {self.max_wait_ms!r}")


@dataclass(frozen=True)
class WyomingOptions:
    """How `fastbark wyoming` serves (its flags come from these fields)."""

    uri: str = field(default="tcp://127.0.0.1:10200", metadata=_help(
        "where to listen: tcp://HOST:PORT (default: this machine only) or unix://PATH"))
    voice: str | None = field(default=None, metadata=_help(
        "the voice when a request names none (default: the checkpoint's first preset, so every sentence of a "
        "stream has one voice)"))
    seed: int | None = field(default=None, metadata=_help(
        "seed every synthesis with this (the same text then gives the same audio); default: random"))
    max_input_chars: int = field(default=4096, metadata=_help("longest synthesize text, in characters"))
    max_batch: int = field(default=8, metadata=_help("most chunks generated together"))
    max_wait_ms: float = field(default=20.0, metadata=_help("how long a chunk waits for company in its batch"))
    max_queue: int = field(default=64, metadata=_help("most syntheses queued or under way; beyond: an error event"))
    data_dir: str | None = field(default=None, metadata=_help(
        "the HTTP server's --data-dir: its uploaded voices are offered here too"))

    def __post_init__(self):
        uri = urlparse(self.uri) if isinstance(self.uri, str) else None
        if uri is None or uri.scheme not in ("tcp", "unix") or (uri.scheme == "tcp" and not (uri.hostname and
                                                                                              _port(uri))):
            raise BadInput(f"uri {self.uri!r} is not one fastbark listens on; accepted: tcp://HOST:PORT or "
                           f"unix://PATH", "uri")
        check_seed(self.seed)
        for name in ("max_input_chars", "max_batch", "max_queue"):
            check_number(name, getattr(self, name), integer=True, low=1)
        check_number("max_wait_ms", self.max_wait_ms, low=0, high=10_000)


def _port(uri) -> int | None:
    try:
        return uri.port
    except ValueError:
        return None
