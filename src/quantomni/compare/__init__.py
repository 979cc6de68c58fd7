"""Compare quantized generations against a BF16 baseline: quality metrics, speed, memory, gates.

Submodules are imported explicitly (``from quantomni.compare.runner import run_comparison``);
this package file imports nothing so that ``import quantomni.compare`` stays free of torch,
matplotlib and transformers imports.
"""
