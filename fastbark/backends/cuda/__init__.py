"""The place for a CUDA backend: `select` still gives CUDA the plain torch backend.

Here now: `offload.py`, CPU offload (`offload=True`): each GPT on the GPU for its stage only.
(`attention="flash"` is `backends/attention.py`: the same SDPA seam serves every device.)

What belongs here, as a `backends.base.Backend` subclass that `select` picks for `device="cuda"`:
- half precision (float16 / bfloat16) with float32 softmax and LayerNorm where fidelity needs it;
- a static KV cache and a `DecodeStep` captured as a CUDA graph (one launch per token);
- fused attention for the whole-sequence passes (`AttentionKernel.whole`).
It must keep the pipeline's contract: batch-invariant rows, no host syncs in the decode loop.
"""
