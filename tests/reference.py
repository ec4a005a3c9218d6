"""Running transformers' Bark (the reference) stage by stage, greedy, in the shapes fastbark returns."""

import numpy as np
import torch
from transformers.generation.logits_process import AlternatingCodebooksLogitsProcessor
from transformers.models.bark import modeling_bark
from transformers.models.bark.generation_configuration_bark import (BarkCoarseGenerationConfig,
                                                                     BarkFineGenerationConfig,
                                                                     BarkSemanticGenerationConfig)

OFFSETS = 10_000 + 1024 * np.arange(2)[:, None]


class SunoAlternatingCodebooks(AlternatingCodebooksLogitsProcessor):
    """transformers lets the second codebook emit ids 12 048..12 095 (pad/infer tokens and beyond), which
    Suno's original code never allows (it slices exactly 1024 logits). fastbark follows the original;
    the parity tests give the reference the same restriction."""

    def __call__(self, input_ids, scores):
        scores = super().__call__(input_ids, scores)
        scores[:, self.semantic_vocab_size + 2 * self.codebook_size:] = -float("inf")
        return scores


modeling_bark.AlternatingCodebooksLogitsProcessor = SunoAlternatingCodebooks


def history(voice):
    return None if voice is None else {k: torch.from_numpy(np.asarray(v)) for k, v in voice.items()}


@torch.no_grad()
def semantic(model, ids, voice=None, min_eos_p=None, max_new_tokens=768):
    ids = ids[:256]
    input_ids = torch.zeros(1, 256, dtype=torch.long)
    mask = torch.zeros(1, 256, dtype=torch.long)
    input_ids[0, : len(ids)] = torch.tensor(ids)
    mask[0, : len(ids)] = 1
    config = BarkSemanticGenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, min_eos_p=min_eos_p)
    out = model.semantic.generate(input_ids, semantic_generation_config=config, attention_mask=mask,
                                  history_prompt=history(voice))[0]
    return out[out != 10_000].numpy()


@torch.no_grad()
def coarse(model, semantic_tokens, voice=None):
    out = model.coarse_acoustics.generate(
        torch.from_numpy(semantic_tokens)[None], semantic_generation_config=BarkSemanticGenerationConfig(),
        coarse_generation_config=BarkCoarseGenerationConfig(do_sample=False), codebook_size=1024,
        history_prompt=history(voice))[0]
    return out.reshape(-1, 2).T.numpy() - OFFSETS  # interleaved ids (2T,) -> codes (2, T)


@torch.no_grad()
def fine(model, coarse_codes, voice=None):
    interleaved = torch.from_numpy((coarse_codes + OFFSETS).T.reshape(-1))[None]  # (2, T) -> (1, 2T)
    out = model.fine_acoustics.generate(
        interleaved, semantic_generation_config=BarkSemanticGenerationConfig(),
        coarse_generation_config=BarkCoarseGenerationConfig(), fine_generation_config=BarkFineGenerationConfig(),
        codebook_size=1024, history_prompt=history(voice), temperature=1.0)  # 1.0 = argmax in transformers
    return out[0].numpy()


@torch.no_grad()
def decode(model, fine_codes):
    return model.codec_decode(torch.from_numpy(fine_codes)[None])[0].numpy()
