"""Capture the denoiser's forward in CUDA graphs, one per input signature.

A DiT step is hundreds of small kernel launches (norms, modulation, activation quantization) around
the GEMMs; replaying a captured graph removes the launch gaps. Each distinct signature (tensor
shapes/dtypes plus the non-tensor arguments) gets its own graph after ``warmup`` eager calls; all
graphs share one memory pool. Inputs are copied into the graph's static tensors before a replay and
outputs are cloned after it, so callers see ordinary tensors.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("quantomni")


def _flatten(obj, tensors: list, path=()):
    """Replace tensors in nested args by placeholders; return a hashable skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return ("T", tuple(obj.shape), str(obj.dtype), str(obj.device))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_flatten(o, tensors) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _flatten(v, tensors)) for k, v in sorted(obj.items())))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return ("V", obj)
    raise TypeError(f"cannot key a CUDA graph on argument of type {type(obj).__name__}")


def _rebuild(skeleton, tensors_iter):
    kind = skeleton[0]
    if kind == "T":
        return next(tensors_iter)
    if kind in ("list", "tuple"):
        items = [_rebuild(s, tensors_iter) for s in skeleton[1]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _rebuild(s, tensors_iter) for k, s in skeleton[1]}
    return skeleton[1]


def _clone_out(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone_out(o) for o in out)
    if hasattr(out, "to_tuple"):  # diffusers BaseOutput
        return type(out)(*[_clone_out(o) for o in out.to_tuple()])
    return out


class _Entry:
    def __init__(self):
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[torch.Tensor] = []
        self.static_output: Any = None


class CudaGraphForward:
    """Callable that replaces ``module.forward``; see module docstring."""

    def __init__(self, module: torch.nn.Module, warmup: int = 2, max_graphs: int = 16):
        if not torch.cuda.is_available():
            raise ValueError("CUDA graphs need a CUDA device; run with enforce_eager / --enforce-eager")
        self.module = module
        self.eager_forward = module.forward
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.entries: dict[Any, _Entry] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.failed: set = set()

    def __call__(self, *args, **kwargs):
        tensors: list[torch.Tensor] = []
        try:
            key = _flatten((args, kwargs), tensors)
        except TypeError:
            return self.eager_forward(*args, **kwargs)
        if key in self.failed or torch.is_grad_enabled():
            return self.eager_forward(*args, **kwargs)
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.max_graphs:
                return self.eager_forward(*args, **kwargs)
            entry = self.entries[key] = _Entry()
        if entry.graph is None:
            entry.calls += 1
            if entry.calls <= self.warmup:
                return self.eager_forward(*args, **kwargs)
            self._capture(key, entry, tensors)
            if entry.graph is None:
                return self.eager_forward(*args, **kwargs)
        for static, new in zip(entry.static_inputs, tensors):
            static.copy_(new)
        entry.graph.replay()
        return _clone_out(entry.static_output)

    def _capture(self, key, entry: _Entry, tensors: list[torch.Tensor]) -> None:
        static = [t.clone() for t in tensors]
        args, kwargs = _rebuild(key, iter(static))
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                self.eager_forward(*args, **kwargs)  # one more warm-up on the capture stream
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.eager_forward(*args, **kwargs)
        except Exception as exc:  # capture is a speed feature: log loudly, keep the eager path
            self.failed.add(key)
            logger.warning("CUDA graph capture failed for %s (running eager for this shape): %s",
                           type(self.module).__name__, exc)
            return
        entry.graph, entry.static_inputs, entry.static_output = graph, static, out
        logger.info("captured a CUDA graph for %s (%d graphs)", type(self.module).__name__,
                    sum(e.graph is not None for e in self.entries.values()))


def enable_cuda_graphs(module: torch.nn.Module, warmup: int = 2) -> CudaGraphForward:
    runner = CudaGraphForward(module, warmup=warmup)
    module.forward = runner  # instance attribute: nn.Module.__call__ now replays graphs
    return runner
