"""Text generation from a decoder LM with a KV cache: sampling, stop conditions, streaming.

Why our own loop instead of ``generate``: it yields text deltas as they are produced (for SSE),
applies stop strings without emitting a partial stop string, seeds a private RNG (no global
torch state touched), and decodes the thinker's language model directly (text-only prompts
need no multimodal position machinery).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import torch

MAX_STOP_STRINGS = 4


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """max_tokens: tokens to generate at most; temperature 0 = greedy; top_p in (0, 1];
    top_k 0 = off; seed None = random; stop: strings that end generation (not included)."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop or ()))
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 1_000_000:
            raise ValueError(f"max_tokens: expected an integer in [1, 1000000], got {self.max_tokens!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature: expected a number in [0, 100], got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k: expected a non-negative integer (0 = off), got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed: expected an integer or None, got {self.seed!r}")
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop: expected up to {MAX_STOP_STRINGS} non-empty strings, got {list(self.stop)!r}")


@dataclasses.dataclass
class TextResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (eos or stop string) | "length"
    prompt_tokens: int
    timings: dict[str, float]

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """logits: float [V] -> one token id (greedy at temperature 0)."""
    logits = logits.float().cpu()
    if not torch.isfinite(logits).any():
        raise RuntimeError("the model produced no finite logits (NaN/Inf everywhere)")
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k:
        k = min(params.top_k, logits.numel())
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        drop = before >= params.top_p  # keep the smallest prefix whose mass reaches top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextGenerator:
    """Decode from ``language_model`` (a transformers decoder taking input_ids / cache) and
    ``lm_head`` with ``tokenizer``; ``eos_ids`` end generation unless ignore_eos."""

    def __init__(self, language_model, lm_head, tokenizer, eos_ids, device):
        self.lm = language_model
        self.lm_head = lm_head
        self.tokenizer = tokenizer
        self.eos_ids = {int(i) for i in eos_ids if i is not None}
        self.device = device
        self.cache_kwarg = cache_kwarg(language_model)

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits: input_ids long [B, T] -> float [B, T, V]."""
        out = self.lm(input_ids=input_ids.to(self.device), use_cache=False)
        return self.lm_head(out.last_hidden_state).float()

    @torch.inference_mode()
    def iter_tokens(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        from transformers import DynamicCache

        if not prompt_ids:
            raise ValueError("prompt: encodes to zero tokens")
        gen = torch.Generator("cpu")
        if params.seed is None:
            gen.seed()
        else:
            gen.manual_seed(params.seed)
        cache = DynamicCache(config=self.lm.config)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        for _ in range(params.max_tokens):
            out = self.lm(input_ids=ids, use_cache=True, **{self.cache_kwarg: cache})
            logits = self.lm_head(out.last_hidden_state[:, -1])[0]
            tok = sample_next(logits, params, gen)
            yield tok
            if tok in self.eos_ids and not params.ignore_eos:
                return
            ids = torch.tensor([[tok]], dtype=torch.long, device=self.device)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[tuple[str, TextResult | None]]:
        """Yield (text delta, None) while generating, then ("", TextResult) once.

        Text is decoded from all generated tokens each step (byte-level BPE pieces may only form
        characters together); a tail that could begin a stop string is held back until resolved.
        """
        t0 = time.perf_counter()
        tokens: list[int] = []
        emitted = 0
        finish = "length"
        text = ""
        hold = max((len(s) for s in params.stop), default=1) - 1
        first_token_s = None
        for tok in self.iter_tokens(prompt_ids, params):
            if first_token_s is None:
                first_token_s = time.perf_counter() - t0
            if tok in self.eos_ids and not params.ignore_eos:
                finish = "stop"
                break
            tokens.append(tok)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = _first_stop(text, params.stop)
            if cut is not None:
                text = text[:cut]
                finish = "stop"
                break
            # trailing U+FFFD may be an incomplete multi-byte character that later tokens complete
            unresolved = len(text) - len(text.rstrip("\ufffd"))
            safe = len(text) - unresolved - hold
            if safe > emitted:
                yield text[emitted:safe], None
                emitted = safe
        if len(text) > emitted:
            yield text[emitted:], None
        total = time.perf_counter() - t0
        timings = {"total_s": total, "first_token_s": first_token_s or total}
        if len(tokens) > 1 and first_token_s is not None:
            timings["decode_tokens_per_s"] = (len(tokens) - 1) / max(total - first_token_s, 1e-9)
        yield "", TextResult(text, tokens, finish, len(prompt_ids), timings)


def cache_kwarg(module) -> str:
    """transformers >= 5.24 names the KV cache argument ``cache`` (``past_key_values`` before)."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
