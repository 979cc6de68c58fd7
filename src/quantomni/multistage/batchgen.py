"""Batched text generation: several prompts decoded together with one KV cache.

Why: decode is memory-bound, so B sequences per forward cost little more than one (the benchmark's
batch-16 rows). Prompts are left-padded and masked; positions come from the cache length, so a
row's positions are shifted by its padding, which rotary attention does not see (it depends on
relative positions only). Each row has its own SamplingParams and seeded generator and stops on
its own (EOS, stop string, max_tokens); finished rows are fed padding, masked out.
"""

from __future__ import annotations

import time

import torch

from quantomni.multistage.textgen import SamplingParams, TextResult, _first_stop, sample_next


@torch.inference_mode()
def generate_batch(gen, prompts: list[list[int]], params: list[SamplingParams], pad_id: int) -> list[TextResult]:
    """gen: a TextGenerator; prompts: token ids per row (non-empty); params: one per row."""
    from transformers import DynamicCache

    if not prompts or len(prompts) != len(params):
        raise ValueError(f"generate_batch: {len(prompts)} prompts but {len(params)} sampling params")
    if any(not p for p in prompts):
        raise ValueError("prompt: a prompt encodes to zero tokens")
    t0 = time.perf_counter()
    b, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    gens = []
    for p in params:
        g = torch.Generator("cpu")
        g.seed() if p.seed is None else g.manual_seed(p.seed)
        gens.append(g)
    cache = DynamicCache(config=gen.lm.config)
    tokens: list[list[int]] = [[] for _ in range(b)]
    texts = [""] * b
    finish = ["length"] * b
    done = [False] * b
    ids, mask = ids.to(gen.device), mask.to(gen.device)
    first_token_s = None
    for _ in range(max(p.max_tokens for p in params)):
        out = gen.lm(input_ids=ids, attention_mask=mask, use_cache=True, **{gen.cache_kwarg: cache})
        logits = gen.lm_head(out.last_hidden_state[:, -1]).float()
        first_token_s = first_token_s or time.perf_counter() - t0
        nxt, live = [], []
        for i in range(b):
            if done[i]:
                nxt.append(pad_id)
                live.append(0)
                continue
            tok = sample_next(logits[i], params[i], gens[i])
            if tok in gen.eos_ids and not params[i].ignore_eos:
                done[i], finish[i] = True, "stop"
            else:
                tokens[i].append(tok)
                texts[i] = gen.tokenizer.decode(tokens[i], skip_special_tokens=True)
                cut = _first_stop(texts[i], params[i].stop)
                if cut is not None:
                    texts[i], done[i], finish[i] = texts[i][:cut], True, "stop"
                elif len(tokens[i]) >= params[i].max_tokens:
                    done[i] = True
            nxt.append(tok)
            live.append(1)
        if all(done):
            break
        ids = torch.tensor(nxt, dtype=torch.long, device=gen.device).view(b, 1)
        mask = torch.cat([mask, torch.tensor(live, dtype=torch.long, device=gen.device).view(b, 1)], dim=1)
    total = time.perf_counter() - t0
    timings = {"total_s": total, "first_token_s": first_token_s or total, "batch_size": float(b)}
    return [TextResult(texts[i], tokens[i], finish[i], len(prompts[i]), dict(timings)) for i in range(b)]
