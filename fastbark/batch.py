"""Batch synthesis: many items (JSON Lines or CSV) to files in a folder, resumably, with a manifest.

An item is `id`, `text`, and optionally `voice`, `seed`, `format` (wav by default) and any field of
GenerationOptions or LongFormOptions; with `speakers` (name -> voice or null; in CSV, that object as JSON
text) and optionally `turn_pause`, its text is a dialogue script (longform/dialogue.py), run on its own.
Item `id`'s audio goes to `OUT/<id>.<format>`, written under a
temporary name and renamed when complete; then one line is appended to `OUT/manifest.jsonl`: its
duration, segments, seed, options and timings, or its error. A rerun skips every id whose manifest
line says "ok" and whose file exists, so a crash or Ctrl-C loses only the batch under way. A bad item
(malformed line, unsafe or repeated id, unknown voice, bad option) is recorded with its error, and
the rest goes on.

`batches` and `run_batch` are the engine-side loop that the CLI and the Ray actors (ray_batch.py) share.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

from .errors import BadInput
from .longform.dialogue import check_speakers, parse_script
from .options import GenerationOptions, LongFormOptions, check_number, check_seed, shown
from .output import FORMATS, check_folder, write_audio
from .text.tokenizer import normalize_text

MANIFEST = "manifest.jsonl"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a file name: no separators, no "..", no hidden files
ITEM_KEYS = {"id", "text", "voice", "seed", "format", "speakers", "turn_pause"}
OPTION_KEYS = {f.name for f in fields(GenerationOptions)} | {f.name for f in fields(LongFormOptions)}
MAX_LINE_BYTES = 1 << 20  # one item's line: a long chapter fits


@dataclass(frozen=True)
class Item:
    """One checked item of a job."""

    id: str
    text: str
    voice: str | None
    seed: int | None
    format: str
    options: dict  # GenerationOptions and LongFormOptions fields, as given
    speakers: dict | None = None  # a dialogue script's voices (longform/dialogue.py); None: one text, one voice
    turn_pause: float = 0.5

    @property
    def group(self) -> tuple:
        """Items of one group share a voice and options, so they run as one batch; a dialogue runs alone."""
        if self.speakers is not None:
            return ("dialogue", self.id)
        return self.voice, self.format, json.dumps(self.options, sort_keys=True)


def check_item(raw, seen: set[str]) -> Item:
    """A raw item (a dict from a JSON line or a CSV row) as an Item; BadInput naming what is wrong. Every
    field is checked here, item by item, so that a bad item never joins (and sinks) a batch."""
    if not isinstance(raw, dict):
        raise BadInput(f"an item must be a JSON object, not {type(raw).__name__}")
    unknown = set(raw) - ITEM_KEYS - OPTION_KEYS
    if unknown:
        raise BadInput(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; an item takes "
                       f"{', '.join(sorted(ITEM_KEYS))} and the option fields", sorted(map(str, unknown))[0])
    item_id = raw.get("id")
    if not isinstance(item_id, str):
        raise BadInput(f"id must be a string (a file name), got {type(item_id).__name__} {shown(item_id)}", "id")
    if not SAFE_ID.match(item_id) or ".." in item_id:
        raise BadInput(f"id {shown(item_id)} is not a safe file name: 1-128 of A-Z a-z 0-9 . _ -, not starting "
                       f"with '.' or '-', no '..'", "id")
    if item_id in seen:
        raise BadInput(f"id {item_id!r} appears more than once", "id")
    text, voice = raw.get("text"), raw.get("voice") or None
    if not isinstance(text, str):
        raise BadInput(f"text must be a string, got {type(text).__name__}", "text")
    normalize_text(text)  # empty, whitespace only, not valid Unicode: refused here, not in its batch
    if voice is not None and not isinstance(voice, str):
        raise BadInput(f"voice must be a preset name or an .npz path, got {shown(voice)}", "voice")
    seed = check_seed(raw.get("seed"))
    fmt = raw.get("format") or "wav"
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise BadInput(f"format {shown(fmt)} is unknown; accepted: {', '.join(FORMATS)}", "format")
    options = {k: v for k, v in raw.items() if k in OPTION_KEYS}
    GenerationOptions(**{k: v for k, v in options.items() if k in GenerationOptions.__dataclass_fields__})
    LongFormOptions(**{k: v for k, v in options.items() if k in LongFormOptions.__dataclass_fields__})
    speakers, turn_pause = raw.get("speakers"), check_number("turn_pause", raw.get("turn_pause", 0.5), low=0, high=10)
    if speakers is not None:
        if voice is not None:
            raise BadInput("voice gives one voice to a whole text; a dialogue's speakers take theirs from speakers",
                           "voice")
        if not isinstance(speakers, dict) or not all(isinstance(v, (str, type(None))) for v in speakers.values()):
            raise BadInput("speakers must map each speaker's name to a voice (a preset or an .npz path) or to "
                           "none", "speakers")
        check_speakers(parse_script(text), speakers)  # the script and its names, checked now
    return Item(item_id, text, voice, seed, fmt.lower(), options, speakers, turn_pause)


def read_items(path: str | os.PathLike) -> Iterator[tuple[int, dict | BadInput]]:
    """(line number, raw item) for each line of a .jsonl or .csv file; a line that cannot be read gives
    (line number, BadInput) instead."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise BadInput(f"cannot read the jobs file {str(path)!r}: {e.strerror}") from None
    with handle:
        if path.suffix.lower() == ".csv":
            try:
                for n, row in enumerate(csv.DictReader(handle), start=2):  # line 1 is the header
                    raw = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                    yield n, _typed_csv(raw)
            except (csv.Error, UnicodeDecodeError) as e:
                raise BadInput(f"{path} is not readable CSV: {e}") from None
            return
        if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
            raise BadInput(f"the jobs file must be JSON Lines (.jsonl) or CSV (.csv), not {path.name!r}")
        n = 0
        while True:
            try:
                line = handle.readline(MAX_LINE_BYTES + 1)
            except UnicodeDecodeError as e:
                yield n + 1, BadInput(f"not UTF-8 ({e.reason}); the rest of the file cannot be read")
                return
            if not line:
                return
            n += 1
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                yield n, BadInput(f"longer than {MAX_LINE_BYTES >> 20} MB")
                handle.readline()  # skip the rest of it
                continue
            try:
                yield n, json.loads(line)
            except ValueError as e:
                yield n, BadInput(f"not a JSON object: {e}")


def _typed_csv(raw: dict) -> dict:
    """CSV cells are text: numbers and booleans for the fields that take them."""
    typed = {}
    for key, value in raw.items():
        if key == "speakers":  # a JSON object in one cell
            try:
                value = json.loads(value)
            except ValueError:
                pass  # left as text: the check says what it takes
        elif key in ("seed", "turn_pause") or key in OPTION_KEYS and key not in ("language", "speaker"):
            low = value.strip().lower()
            if low in ("true", "false"):
                value = low == "true"
            elif low == "none":
                value = None
            else:
                try:
                    value = int(value) if re.fullmatch(r"[+-]?\d+", value.strip()) else float(value)
                except ValueError:
                    pass  # left as text: the option's check says what it takes
        typed[key] = value
    return typed


class Manifest:
    """OUT/manifest.jsonl: appended whole lines, synced, one line per outcome. A record equal to the last
    one of its item (an error met again on a rerun, timings aside) is not appended again."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / MANIFEST
        self.last: dict[tuple, str] = {}  # an item's key -> the signature of its last record
        self.records: dict[str, dict] = {}  # id -> its last record (a half-written last line from a crash is ignored)
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        self._remember(record)
        except FileNotFoundError:
            pass

    @staticmethod
    def _key(record: dict) -> tuple:
        if isinstance(record.get("id"), str):
            return ("id", record["id"])
        return ("refused", record.get("line"), repr(record.get("given_id")))

    @staticmethod
    def _signature(record: dict) -> str:
        return json.dumps({k: v for k, v in record.items() if k != "timings"}, sort_keys=True)

    def _remember(self, record: dict) -> None:
        self.last[self._key(record)] = self._signature(record)
        if isinstance(record.get("id"), str):
            self.records[record["id"]] = record

    def done_ids(self) -> set[str]:
        return {i for i, r in self.records.items()
                if r.get("status") == "ok" and isinstance(r.get("file"), str) and (self.out / r["file"]).is_file()}

    def append(self, records: Iterable[dict]) -> None:
        """Append whole lines and sync them: a record is written only after its file is complete."""
        lines = []
        for record in records:
            if self.last.get(self._key(record)) == self._signature(record):
                continue  # the same outcome as last time: the manifest already says so
            self._remember(record)
            lines.append(_json_line(record))
        if lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())


def _json_line(record: dict) -> str:
    line = json.dumps(record, ensure_ascii=False) + "\n"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # text that is not valid Unicode (a lone surrogate): escaped
        line = json.dumps(record) + "\n"
    return line


def error_record(item_id, line: int | None, error: Exception) -> dict:
    message = str(error) if isinstance(error, BadInput) else f"internal error: {type(error).__name__}: {error}"
    return {"id": item_id, "status": "error", "line": line, "error": message}


def rejected_record(given_id, line: int, error: Exception) -> dict:
    """An item refused before running: its id may be unsafe or taken, so it is kept apart from `id`."""
    return {"id": None, "given_id": given_id, "status": "error", "line": line, "error": str(error)}


def batches(items: list[Item], batch_size: int) -> Iterator[list[Item]]:
    """The items in batches of at most `batch_size`, each batch from one group (one voice, one set of options)."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    for group in groups.values():
        for first in range(0, len(group), batch_size):
            yield group[first: first + batch_size]


def run_batch(tts, batch: list[Item], out: Path) -> list[dict]:
    """Generate one batch (items of one group), write each file, and return their manifest records. When
    the batch fails (an unknown voice, a bad option met at run time, an error in the engine), each of its
    items is run alone, so that every item gets its own outcome and its own error."""
    start = time.perf_counter()
    try:
        if batch[0].speakers is not None:  # a dialogue: its group is itself
            outs = [tts.dialogue(batch[0].text, batch[0].speakers, seed=batch[0].seed, turn_pause=batch[0].turn_pause,
                                 **batch[0].options)]
        else:
            outs = tts.generate([i.text for i in batch], voice=batch[0].voice, seed=[i.seed for i in batch],
                                batch_size=len(batch), **batch[0].options)
    except Exception as e:  # noqa: BLE001 - recorded in the manifest; Ctrl-C and SIGTERM pass through
        if len(batch) > 1:
            return [record for item in batch for record in run_batch(tts, [item], out)]
        return [error_record(batch[0].id, None, e)]
    seconds = (time.perf_counter() - start) / len(batch)
    records = []
    for item, result in zip(batch, outs):
        name = f"{item.id}.{item.format}"
        try:
            write_audio(str(out / name), result.audio, item.format)
        except (OSError, BadInput) as e:  # a full disk, say: this item failed, the others may not
            records.append(error_record(item.id, None, BadInput(f"cannot write {name}: {e}")))
            continue
        records.append({"id": item.id, "status": "ok", "file": name, "duration_s": result.duration_s,
                        "seed": item.seed, "voice": item.voice, "options": item.options,
                        "segments": [{"text": s.text, "start": s.start, "end": s.end,
                                      "semantic_tokens": len(s.semantic_tokens),
                                      **({"speaker": s.speaker} if s.speaker is not None else {}),
                                      **(check_record(s.check) if s.check is not None else {})}
                                     for s in result.segments],
                        "timings": {"generate_s_per_item": seconds, "batch": len(batch)}})
    return records


def check_record(check) -> dict:
    """A chunk's verification, as the manifest records it (longform/verify.py)."""
    return {"check": {"passed": check.passed, "wer": check.wer, "duration_ratio": round(check.duration_ratio, 3),
                      "attempts": check.attempts}}


def prepare_out(out: str | os.PathLike) -> Manifest:
    """The output folder, made if needed and proven writable (a file is created and removed there), before
    any model loads; its manifest."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {str(out)!r} is a file; give a folder", "out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot make the output folder {str(out)!r}: {e.strerror}", "out") from None
    check_folder(out, "output folder")
    if (out / MANIFEST).exists() and not os.access(out / MANIFEST, os.W_OK):
        raise BadInput(f"cannot write {str(out / MANIFEST)!r}: permission denied", "out")
    return Manifest(out)


def plan(jobs: str | os.PathLike, out: str | os.PathLike) -> tuple[Manifest, list[tuple[int, Item]], list[dict], int]:
    """Read and check every item, skipping those already done: (the output's manifest, (line, item) to run,
    error records, how many were skipped)."""
    manifest = prepare_out(out)
    done, seen = manifest.done_ids(), set()
    todo, errors, skipped = [], [], 0
    for line, raw in read_items(jobs):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        try:
            if isinstance(raw, BadInput):
                raise raw
            item = check_item(raw, seen)
        except BadInput as e:
            errors.append(rejected_record(raw_id if isinstance(raw_id, (str, int)) else None, line, e))
            continue
        seen.add(item.id)
        if item.id in done:
            skipped += 1
        else:
            todo.append((line, item))
    return manifest, todo, errors, skipped


def synthesize(tts, items: Iterable[dict], out: str | os.PathLike, batch_size: int = 8) -> Iterator[dict]:
    """The same job from Python: raw items (dicts) -> manifest records, as each batch finishes. Files and
    the manifest go to `out`, and items already done there are skipped, as with `fastbark batch`."""
    manifest = prepare_out(out)
    done, seen, todo = manifest.done_ids(), set(), []
    for n, raw in enumerate(items, start=1):
        try:
            item = check_item(raw, seen)
        except BadInput as e:
            record = rejected_record(raw.get("id") if isinstance(raw, dict) else None, n, e)
            manifest.append([record])
            yield record
            continue
        seen.add(item.id)
        if item.id not in done:
            todo.append(item)
    for batch in batches(todo, batch_size):
        records = run_batch(tts, batch, manifest.out)
        manifest.append(records)
        yield from records
