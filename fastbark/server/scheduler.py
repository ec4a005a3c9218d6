"""One thread owns the engine; the chunks of concurrent requests that share options join one batch.

A request is a narrated text (narrate.TextJob). Its first chunk is queued at once; with no voice, the
rest are queued when the first is done (its generation is their voice, as in `Bark.generate`). The
scheduler takes the oldest queued chunk, waits up to `max_wait_ms` for company, and runs every queued
chunk with the same options (up to `max_batch`) as one batch: the semantic stage as one batch
whatever the voices, the coarse and fine stages one batch per voice (Bark.generate_chunks). Seeds
are per chunk, and the engine is batch-invariant, so a seeded request gets the same audio batched
or alone.

A cancelled request (its client went away) has its queued chunks dropped before the next batch. The
queue is bounded: `submit` refuses work beyond `max_queue` requests (the server answers 429).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..longform import narrate
from ..options import GenerationOptions, LongFormOptions
from ..results import AudioChunk

Deliver = Callable[["AudioChunk | BaseException | None"], None]  # a chunk, an error, or None: the request is done


@dataclass(eq=False)
class Request:
    job: narrate.TextJob
    options: GenerationOptions
    long_form: LongFormOptions
    deliver: Deliver
    cancelled: bool = False
    next_chunk: int = 0  # the chunk to deliver next
    done: dict = field(default_factory=dict)  # chunk index -> generation, until delivered in order
    voice: object = None  # the voice of chunks after the first


@dataclass(eq=False)
class Unit:
    request: Request
    chunk: int
    voice: object
    voice_key: tuple  # units with equal voice keys share a voice: their coarse and fine stages one batch
    key: tuple  # units with equal keys may share a batch
    queued: float


class Busy(Exception):
    """The queue is full: try again later."""


class Scheduler:
    def __init__(self, generate_chunks, max_batch: int = 8, max_wait_ms: float = 20, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        self._generate_chunks, self.max_batch, self.max_wait = generate_chunks, max_batch, max_wait_ms / 1000
        self.max_queue, self._on_batch = max_queue, on_batch
        self._units: list[Unit] = []
        self._requests: set[Request] = set()
        self._cv = threading.Condition()
        self._stop = False
        self._running = False  # a batch is under way (even one whose requests have all been cancelled)
        self._thread = threading.Thread(target=self._run, name="fastbark-scheduler", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests queued or under way."""
        return len(self._requests)

    @property
    def busy(self) -> bool:
        """The engine is generating a batch (whether or not anyone still waits for it)."""
        return self._running

    def submit(self, job: narrate.TextJob, options: GenerationOptions, long_form: LongFormOptions,
               deliver: Deliver) -> Request:
        with self._cv:
            if len(self._requests) >= self.max_queue:
                raise Busy(f"{len(self._requests)} requests are queued, the most this server takes")
            request = Request(job, options, long_form, deliver)
            self._requests.add(request)
            self._queue(request, 0, job.voice, (job.voice_key,))
            self._cv.notify()
        return request

    def cancel(self, request: Request) -> None:
        with self._cv:
            request.cancelled = True
            self._units = [u for u in self._units if u.request is not request]
            self._requests.discard(request)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _queue(self, request: Request, chunk: int, voice, voice_key: tuple) -> None:
        # a batch shares its generation options and its checks (verification)
        key = (request.options, request.long_form.verification)
        self._units.append(Unit(request, chunk, voice, voice_key, key, time.monotonic()))

    def _take(self) -> list[Unit] | None:
        with self._cv:
            while not self._units and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            first = self._units[0]
            deadline = first.queued + self.max_wait
            while len([u for u in self._units if u.key == first.key]) < self.max_batch and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch = [u for u in self._units if u.key == first.key][: self.max_batch]
            self._units = [u for u in self._units if u not in batch]
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            batch = [u for u in batch if not u.request.cancelled]
            if not batch:
                continue
            start = time.perf_counter()
            one_per_key: dict[tuple, object] = {}  # units that share a voice key get one voice object
            voices = [one_per_key.setdefault(u.voice_key, u.voice) for u in batch]
            self._running = True
            try:
                gens = self._generate_chunks([u.request.job.ids[u.chunk] for u in batch], voices,
                                             batch[0].request.options,
                                             [u.request.job.chunk_seed(u.chunk) for u in batch], None,
                                             texts=[u.request.job.chunks[u.chunk] for u in batch],
                                             long_form=batch[0].request.long_form)
            except BaseException as e:  # one failed batch fails its requests only
                for u in batch:
                    self._finish(u.request, e)
                continue
            finally:
                self._running = False
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - start)
            for unit, generation in zip(batch, gens):
                self._done(unit, generation)

    def _done(self, unit: Unit, generation) -> None:
        request, job = unit.request, unit.request.job
        if request.cancelled:
            return
        with self._cv:
            if unit.chunk == 0 and len(job.chunks) > 1:  # the rest can be queued now
                job.first = generation
                if request.long_form.speaker == "continue":
                    self._queue(request, 1, narrate.as_voice(generation), ("after", id(request), 1))
                else:
                    voice = job.voice if job.voice is not None else narrate.as_voice(generation)
                    key = (job.voice_key,) if job.voice is not None else ("first", id(request))
                    for c in range(1, len(job.chunks)):
                        self._queue(request, c, voice, key)
            elif request.long_form.speaker == "continue" and unit.chunk + 1 < len(job.chunks):
                self._queue(request, unit.chunk + 1, narrate.as_voice(generation),
                            ("after", id(request), unit.chunk + 1))
            self._cv.notify()
        request.done[unit.chunk] = generation
        while request.next_chunk in request.done:  # deliver in order
            chunk = request.next_chunk
            request.deliver(narrate.join(job, chunk, request.done.pop(chunk), request.long_form))
            request.next_chunk += 1
        if request.next_chunk == len(job.chunks):
            self._finish(request, None)

    def _finish(self, request: Request, error: BaseException | None) -> None:
        with self._cv:
            self._requests.discard(request)
            if error is not None:  # its other chunks will not be needed
                request.cancelled = True
                self._units = [u for u in self._units if u.request is not request]
        request.deliver(error)
