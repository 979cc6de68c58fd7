"""Render a bench_flux_step.py JSON as the markdown table used in docs/performance.md."""

import json
import sys


def render(path: str) -> str:
    d = json.load(open(path))
    m = d["meta"]
    out = [f"Device: {m['device']}, torch {m['torch']}, CUDA {m['cuda']}, torchao {m.get('torchao')}; "
           f"date {m['date']}; commit {m['commit']}; depth {m['depth']}. Raw: `{path}`.", "",
           "| variant | mode | ms / step | speed-up vs BF16 (same mode) | rel. err vs BF16 eager | quantized layers | compile s |",
           "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        if "ms_median" not in r:
            err = " ".join(r.get("error", "").split())[:80]
            out.append(f"| {r['variant']} | {r['mode']} | error: {err} | | | | |")
            continue
        out.append(f"| {r['variant']} | {r['mode']} | {r['ms_median']:.2f} | {r.get('speedup_vs_bf16_same_mode', float('nan')):.2f}x | "
                   f"{r.get('rel_err_vs_bf16', float('nan')):.4f} | {r.get('quantized_layers', 0)} | "
                   f"{r['compile_s']:.0f} |" if "compile_s" in r else
                   f"| {r['variant']} | {r['mode']} | {r['ms_median']:.2f} | {r.get('speedup_vs_bf16_same_mode', float('nan')):.2f}x | "
                   f"{r.get('rel_err_vs_bf16', float('nan')):.4f} | {r.get('quantized_layers', 0)} | - |")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(sys.argv[1]))
