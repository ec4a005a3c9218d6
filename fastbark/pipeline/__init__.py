"""The Bark algorithm, backend-agnostic: text ids -> semantic -> coarse -> fine tokens (stages in
semantic.py, coarse.py, fine.py over the shared prefill / decode loop of decoding.py), with token
choice in sampling.py and progress through callbacks (progress.py)."""
