"""Pictures of a comparison: ``grid.png`` (Pillow) and ``tradeoff.png`` (matplotlib, Agg, imported lazily).

Metrics reported as "not computed" (no weights) get no panel: a plot never shows a placeholder
number.  Non-finite values (PSNR of identical images) are left out of the scatter and named in the
panel title.
"""

from __future__ import annotations

import math
from pathlib import Path

from quantomni.compare.runner import Report

THUMB = 256
_PAD = 6
_LABEL_H = 22


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def write_grid(report: Report, path: str | Path, thumb: int = THUMB) -> Path:
    """One row per prompt (first seed), one column per engine (baselines first), labelled."""
    from PIL import Image, ImageDraw

    labels = list(report.grid_images)
    prompts = report.settings["prompts"]
    thumbs: dict[tuple[str, int], Image.Image] = {}
    cell_w = cell_h = 1
    for label in labels:
        for i, img in report.grid_images[label].items():
            t = img.convert("RGB")
            t.thumbnail((thumb, thumb))
            thumbs[(label, i)] = t
            cell_w, cell_h = max(cell_w, t.width), max(cell_h, t.height)
    width = _PAD + len(labels) * (cell_w + _PAD)
    height = _LABEL_H + len(prompts) * (_LABEL_H + cell_h + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    role = {lab: report.engines.get(lab, {}).get("role", "") for lab in labels}
    for c, label in enumerate(labels):
        x = _PAD + c * (cell_w + _PAD)
        text = f"{label} (baseline)" if role[label] == "baseline" else label
        draw.text((x, 5), text[: max(8, cell_w // 6)], fill="black", font=font)
    for r, prompt in enumerate(prompts):
        y = _LABEL_H + r * (_LABEL_H + cell_h + _PAD)
        caption = f"[{r}] {prompt}"
        max_chars = max(10, (width - 2 * _PAD) // 6)
        draw.text((_PAD, y + 5), caption if len(caption) <= max_chars else caption[: max_chars - 3] + "...",
                  fill="dimgray", font=font)
        for c, label in enumerate(labels):
            t = thumbs.get((label, r))
            if t is not None:
                canvas.paste(t, (_PAD + c * (cell_w + _PAD), y + _LABEL_H))
    out = Path(path)
    canvas.save(out, format="PNG")
    return out


_QUALITY = [("psnr", "PSNR dB (higher is better)"), ("ssim", "SSIM (higher is better)"),
            ("lpips", "LPIPS (lower is better)"), ("clip_score_delta", "CLIP score delta")]


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_tradeoff(report: Report, path: str | Path) -> Path:
    """Quality (rows: computed metrics) against peak memory, denoiser weight bytes and latency (columns)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover
        raise ImportError("tradeoff.png needs matplotlib: pip install matplotlib") from exc
    cases = report.cases
    metrics = [(k, t) for k, t in _QUALITY if any(_numeric(c["mean"][k]) for c in cases)]
    axes_x = []
    for xkey, xtitle, scale in (("peak_memory_bytes", "peak device memory GiB", 1024 ** 3),
                                ("denoiser_weight_bytes", "denoiser weights GiB", 1024 ** 3),
                                ("latency_mean_s", "latency per image s", 1.0)):
        if any(_numeric(report.engines[c["candidate"]][xkey]) for c in cases):
            axes_x.append((xkey, xtitle, scale))
    axes_x = axes_x or [("latency_mean_s", "latency per image s", 1.0)]
    fig = Figure(figsize=(5.5 * len(axes_x), 3.6 * max(1, len(metrics))), dpi=100)
    FigureCanvasAgg(fig)
    if not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no quality metric computed", ha="center", va="center")
        ax.set_axis_off()
    for r, (key, title) in enumerate(metrics):
        for c, (xkey, xtitle, scale) in enumerate(axes_x):
            ax = fig.add_subplot(len(metrics), len(axes_x), r * len(axes_x) + c + 1)
            skipped = []
            for case in cases:
                x = report.engines[case["candidate"]][xkey]
                y = case["mean"][key]
                if not (_numeric(x) and _numeric(y) and math.isfinite(x) and math.isfinite(y)):
                    skipped.append(case["name"])
                    continue
                ax.scatter([x / scale], [y])
                ax.annotate(case["name"], (x / scale, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            for label in {case["baseline"] for case in cases}:
                bx = report.engines[label][xkey]
                if _numeric(bx) and math.isfinite(bx):
                    ax.axvline(bx / scale, linestyle="--", color="gray", linewidth=1)
                    ax.annotate(f"{label} (baseline)", (bx / scale, 0.02), xycoords=("data", "axes fraction"),
                                fontsize=7, color="gray", rotation=90)
            ax.set_xlabel(xtitle)
            ax.set_ylabel(title)
            if skipped:
                ax.set_title(f"not plotted (non-finite or missing): {', '.join(skipped)}", fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
