"""The fine stage's window passes replayed from CUDA graphs (the `WindowPasses` seam of `FineGPT`).

The fine stage runs one text per pass (`pipeline/fine.py`: a text's numbers must not depend on its
companions), six passes (codebooks 2-7) over each 1024-frame window. On a GPU such a pass is a few
hundred small kernels launched one by one: at a batch of 16 texts the fine stage took 0.49-0.67 s on an
H200 (RESULTS section 42), 30-40 ms a text, for about 1 TFLOP of products a text (bark-small: 6 passes of
2 x 85 M weights x 1024 frames), about a millisecond at the GPU's half-precision rate. Here each codebook's
pass over one text's window is captured once as a CUDA graph over a static input and replayed.

A captured pass computes the logits of every position of the window and the caller's `start` is sliced
off afterwards, so that one graph serves every start; uncaptured (on the CPU, and wherever capture was
refused), the same whole-window pass runs, so the tests on the CPU prove the arithmetic the graphs
replay. Graphs are captured again when the weights move; with offload (the model moves every
generation) the passes are not captured at all.
"""

from __future__ import annotations

import torch

from ...models.gpt import FineGPT
from .decoder import capture


class CapturedPasses:
    """`WindowPasses` for one FineGPT: a text's pass (batch 1) of each codebook and window length replayed
    from a CUDA graph where `graphs`, else run as is; both compute every position and slice `start` off."""

    def __init__(self, model: FineGPT, graphs: bool):
        self.model, self.graphs = model, graphs
        self.kind = "cuda-graph" if graphs else "whole"
        self._graphs: dict[tuple[int, int], tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None  # one memory pool for every pass's graph: they run one after another
        self._weights: tuple[int, ...] = ()

    def __call__(self, codes: torch.Tensor, codebook: int, start: int) -> torch.Tensor:
        """codes (B, T, n_codes_total) -> logits (B, T - start, V) of `codebook`."""
        if not self.graphs or codes.shape[0] != 1:
            return self.model(codes, codebook, 0)[:, start:]
        weights = tuple(p.data_ptr() for p in self.model.parameters())
        if weights != self._weights:  # a graph reads the parameters where they were when it was captured
            self._graphs.clear()
            self._weights = weights
        key = (codebook, codes.shape[1])
        if key not in self._graphs:
            static = codes.clone()
            graph, out = capture(lambda: self.model(static, codebook, 0), codes.device, self._pool)
            self._pool = self._pool or graph.pool()
            self._graphs[key] = static, graph, out
        static, graph, out = self._graphs[key]
        static.copy_(codes)
        graph.replay()
        return out[:, start:].clone()  # the graph's output is overwritten by its next replay

    def check(self) -> str | None:
        """Why this GPU's captured passes cannot be used, or None: one captured pass of the real model over a
        window of zero codes must give the uncaptured pass's logits (checked once, when the backend is
        prepared; the graph captured for it is kept: the pipeline's first window replays it). Where they
        cannot, the passes run uncaptured."""
        if not self.graphs:
            return None
        device = self.model.position_embeds_layer.weight.device
        codes = torch.zeros(1, self.model.config.block_size, self.model.config.n_codes_total, dtype=torch.long,
                            device=device)
        codebook = self.model.config.n_codes_given
        try:
            with torch.inference_mode():
                want = self.model(codes, codebook, 0).float()
                got = self(codes, codebook, 0).float()
            why = None if torch.allclose(got, want, rtol=0.02, atol=0.02) else \
                "a captured pass's logits differ from the uncaptured pass's"
        except Exception as e:  # noqa: BLE001 - any failure means: run the passes uncaptured, and say why
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        if why:
            self._graphs.clear()
            self._pool = None
        return why
