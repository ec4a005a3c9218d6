"""CPU offload: the three GPTs live in pinned CPU memory, and each goes to the GPU only for its stage.

`Offload.stage(name)` is a context: on entry the stage's model is on the device (already there if it
was prefetched), and the model of the stage that usually follows (semantic -> coarse -> fine) starts
copying on a side stream, so that its transfer overlaps this stage's work; on exit the stage's
device copy is dropped (its pinned CPU copy stays), and so are the KV caches its decoder kept. At
most two GPTs are on the device at once: the one running and the one arriving. transformers'
`enable_cpu_offload` moves them one after the other, with nothing overlapped.

The moves go through `move(name, where)` only, so a test on the CPU can record their order.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ...models.gpt import CausalGPT

NEXT = {"semantic": "coarse", "coarse": "fine", "fine": None}  # the stage that usually follows


class Offload:
    def __init__(self, models: dict[str, nn.Module], device: torch.device):
        self.models, self.device = models, torch.device(device)
        cuda = self.device.type == "cuda"
        self._side = torch.cuda.Stream(self.device) if cuda else None
        # the CPU home of every tensor, pinned (page-locked) on CUDA so that copies can be asynchronous
        self._home = {name: {key: (t.detach().cpu().pin_memory() if cuda else t.detach().cpu())
                             for key, t in _tensors(model)} for name, model in models.items()}
        self._events: dict[str, torch.cuda.Event | None] = {}  # models on the device (or arriving) -> ready event
        for name in models:
            self.move(name, "cpu")

    def move(self, name: str, where: str) -> None:
        """Put model `name`'s tensors on the device ("device"), arriving asynchronously on the side stream
        (its event marks them ready), or back on their pinned CPU copies ("cpu")."""
        model = self.models[name]
        if where == "cpu":
            for key, tensor in _tensors(model):
                tensor.data = self._home[name][key]
            if isinstance(model, CausalGPT):
                model.release_caches()  # its decoder's KV caches leave the device with it
            self._events.pop(name, None)
            return
        with torch.cuda.stream(self._side) if self._side is not None else contextlib.nullcontext():
            for key, tensor in _tensors(model):
                tensor.data = self._home[name][key].to(self.device, non_blocking=True)
            event = torch.cuda.Event() if self._side is not None else None
            if event is not None:
                event.record(self._side)
        self._events[name] = event

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self._events:
            self.move(name, "device")
        event = self._events[name]
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)  # its copy is done before its work starts
            for _, tensor in _tensors(self.models[name]):
                tensor.record_stream(current)  # made on the side stream, used on this one: freed after it
        following = NEXT[name]
        if following is not None and following not in self._events:
            self.move(following, "device")  # prefetch, overlapping this stage
        try:
            yield
        finally:
            for other in [n for n in self._events if n not in (name, following)]:
                self.move(other, "cpu")  # only the stage that ran and the one arriving stay
            self.move(name, "cpu")

    def on_device(self) -> list[str]:
        return sorted(self._events)


def _tensors(model: nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()
