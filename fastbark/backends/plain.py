"""The plain torch backend: the models as they are, on any device (CPU, CUDA, MPS), in any dtype.

It swaps nothing in. On a GPU this is what runs today; on the CPU (`backend="torch"`) the tests run
it in float32, float16 and bfloat16 so that every line a GPU would execute is exercised.
"""

from __future__ import annotations

from .base import Backend, Models


class TorchBackend(Backend):
    name = "torch"

    def prepare(self, models: Models) -> list[str]:
        for model in models:
            model.use_kernels()  # the models' own torch code at every seam
        return []
