"""quantomni compare --model DIR --baseline bf16 --candidates fp8,int8 --out DIR [--gate ...] [--per-layer]"""

from __future__ import annotations


def add_arguments(p):
    from quantomni.compare.cli import add_compare_arguments

    add_compare_arguments(p)


def run(args) -> int:
    from quantomni.compare.cli import run_compare_command

    return run_compare_command(args)
