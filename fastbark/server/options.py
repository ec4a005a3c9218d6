"""The server's options (fastbark serve's flags come from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BadInput


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
    max_body_bytes: int = field(default=1 << 20, metadata=_help("largest request body accepted"))
    data_dir: str | None = field(default=None, metadata=_help("where uploaded voices are kept (default: none kept)"))
    api_key: str | None = field(default=None, metadata=_help(
        "require `Authorization: Bearer KEY` (also from FASTBARK_API_KEY)"))
    cors_origins: str | None = field(default=None, metadata=_help("comma list of origins allowed by CORS (off by default)"))
    voice_map: str | None = field(default=None, metadata=_help(
        "a JSON file mapping OpenAI voice names (alloy, nova, ...) to presets; overrides the built-in table"))

    def __post_init__(self):
        for name in ("port", "max_input_chars", "max_batch", "max_queue", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "port" else 1):
                raise BadInput(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 10_000:
            raise BadInput(f"max_wait_ms must be in 0..10000, got {self.max_wait_ms!r}")
