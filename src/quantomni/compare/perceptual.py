"""LPIPS and CLIP score from *local* weights only; without weights the metric is "not computed".

No backbone weights can be downloaded here, and a number computed with a random backbone is not
LPIPS or CLIP score, so this module never builds one: it loads what the user points to and
otherwise the report says :data:`NOT_COMPUTED` for that metric.

LPIPS (``--lpips-weights FILE``)
    Implemented here in plain torch (the ``lpips`` package needs torchvision).  The metric: scale
    the images to [-1, 1], shift/scale per channel, run an AlexNet feature stack, take the five
    ReLU outputs, normalise each position's feature vector to unit length, square the difference,
    weight channels with a non-negative 1x1 linear head, average over space and sum the five layers.
    ``FILE`` is a safetensors file holding (float tensors, any float dtype)::

        features.0.weight  [64, 3, 11, 11]    features.0.bias  [64]     # conv1, stride 4, pad 2
        features.3.weight  [192, 64, 5, 5]    features.3.bias  [192]    # conv2, pad 2
        features.6.weight  [384, 192, 3, 3]   features.6.bias  [384]    # conv3, pad 1
        features.8.weight  [256, 384, 3, 3]   features.8.bias  [256]    # conv4, pad 1
        features.10.weight [256, 256, 3, 3]   features.10.bias [256]    # conv5, pad 1
        lin0.weight [1, 64, 1, 1]  lin1.weight [1, 192, 1, 1]  lin2.weight [1, 384, 1, 1]
        lin3.weight [1, 256, 1, 1] lin4.weight [1, 256, 1, 1]

    i.e. torchvision's ``alexnet().features`` state dict plus the LPIPS v0.1 "alex" linear heads
    (their ``linK.model.1.weight`` names are accepted too).  Build it once on a machine that has
    both, e.g. ``save_file({**{"features."+k: v for k, v in alexnet.features.state_dict().items()},
    **{f"lin{k}.weight": head_k}}, "lpips_alex.safetensors")``.

CLIP score (``--clip-model DIR``)
    ``DIR`` is a transformers ``CLIPModel`` + ``CLIPProcessor`` saved with ``save_pretrained``.
    Score = ``100 * max(cos(image_embedding, text_embedding), 0)`` (the torchmetrics definition).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


from quantomni.compare.errors import CompareInputError, ImageMismatchError
from quantomni.compare.metrics import to_uint8_rgb

NOT_COMPUTED = "not computed: no weights"

# (key, shape) of the AlexNet convolutions: conv index in torchvision's ``features`` -> (out, in, k, stride, pad)
_ALEX_CONVS = [(0, 64, 3, 11, 4, 2), (3, 192, 64, 5, 1, 2), (6, 384, 192, 3, 1, 1),
               (8, 256, 384, 3, 1, 1), (10, 256, 256, 3, 1, 1)]
# LPIPS input normalisation (per RGB channel), applied after scaling pixels to [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_MIN_SIDE = 32


def expected_lpips_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape that an ``--lpips-weights`` file must hold."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (idx, out_c, in_c, k, _s, _p) in enumerate(_ALEX_CONVS):
        shapes[f"features.{idx}.weight"] = (out_c, in_c, k, k)
        shapes[f"features.{idx}.bias"] = (out_c,)
        shapes[f"lin{i}.weight"] = (1, out_c, 1, 1)
    return shapes


def _read_lpips_tensors(path: str) -> dict:
    if not path or not os.path.isfile(path):
        raise CompareInputError(f"--lpips-weights: file {path!r} does not exist")
    try:
        from safetensors.torch import load_file
        raw = load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CompareInputError(f"--lpips-weights: {path!r} is not a readable safetensors file: {exc}") from exc
    tensors = {}
    for name, t in raw.items():
        if name.startswith("lin") and name.endswith(".model.1.weight"):
            name = name.replace(".model.1.weight", ".weight")
        tensors[name] = t
    for name, shape in expected_lpips_shapes().items():
        if name not in tensors:
            raise CompareInputError(f"--lpips-weights: {path!r} lacks tensor {name!r} (expected shape {list(shape)}); "
                                    f"see quantomni.compare.perceptual for the layout")
        t = tensors[name]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise CompareInputError(f"--lpips-weights: tensor {name!r} in {path!r} has shape {list(t.shape)} "
                                    f"dtype {t.dtype}; expected float {list(shape)}")
        if not bool(t.isfinite().all()):
            raise CompareInputError(f"--lpips-weights: tensor {name!r} in {path!r} holds NaN/inf")
    return tensors


class LpipsScorer:
    """LPIPS (AlexNet variant) computed in plain torch from a local weights file (see module doc)."""

    def __init__(self, weights_path: str, device: str = "cpu"):
        import torch

        tensors = _read_lpips_tensors(weights_path)
        self.weights_path = weights_path
        self.device = torch.device(device)
        self._convs = []
        for i, (idx, _o, _in, _k, stride, pad) in enumerate(_ALEX_CONVS):
            w = tensors[f"features.{idx}.weight"].float().to(self.device)
            b = tensors[f"features.{idx}.bias"].float().to(self.device)
            head = tensors[f"lin{i}.weight"].float().to(self.device)
            self._convs.append((w, b, stride, pad, head))
        self._shift = torch.tensor(_SHIFT, device=self.device).view(1, 3, 1, 1)
        self._scale = torch.tensor(_SCALE, device=self.device).view(1, 3, 1, 1)

    def _features(self, x):
        import torch.nn.functional as F

        feats = []
        for i, (w, b, stride, pad, _head) in enumerate(self._convs):
            if i in (1, 2):  # AlexNet max-pools before conv2 and conv3
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(F.conv2d(x, w, b, stride=stride, padding=pad))
            feats.append(x)
        return feats

    def _to_tensor(self, image, what: str):
        import torch

        arr = to_uint8_rgb(image, what)
        if min(arr.shape[:2]) < _MIN_SIDE:
            raise ImageMismatchError(f"LPIPS needs images of at least {_MIN_SIDE}x{_MIN_SIDE}, got {arr.shape[1]}x{arr.shape[0]}")
        t = torch.from_numpy(arr.copy()).to(self.device).permute(2, 0, 1)[None].float()
        return ((t / 127.5 - 1.0) - self._shift) / self._scale

    def __call__(self, reference, candidate) -> float:
        import torch

        ref = self._to_tensor(reference, "baseline image")
        cand = self._to_tensor(candidate, "candidate image")
        if ref.shape != cand.shape:
            raise ImageMismatchError(f"LPIPS: baseline image {tuple(ref.shape[2:])} and candidate image "
                                     f"{tuple(cand.shape[2:])} (HxW) differ in size")
        total = 0.0
        with torch.no_grad():
            for f0, f1, (_w, _b, _s, _p, head) in zip(self._features(ref), self._features(cand), self._convs):
                n0 = f0 / (f0.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                n1 = f1 / (f1.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                total += float(torch.nn.functional.conv2d((n0 - n1) ** 2, head).mean())
        return total


class ClipScorer:
    """CLIP score of an image against its prompt, from a local ``save_pretrained`` directory."""

    def __init__(self, model_dir: str, device: str = "cpu"):
        if not model_dir or not os.path.isdir(model_dir):
            raise CompareInputError(f"--clip-model: directory {model_dir!r} does not exist")
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as exc:  # pragma: no cover
            raise ImportError("CLIP score needs transformers: pip install transformers") from exc
        try:
            self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
        except Exception as exc:
            raise CompareInputError(f"--clip-model: could not load a CLIPModel and CLIPProcessor from "
                                    f"{model_dir!r}: {exc}") from exc
        self.model_dir = model_dir
        self.device = device

    @staticmethod
    def _embedding(out):
        import torch

        if isinstance(out, torch.Tensor):
            return out
        for attr in ("image_embeds", "text_embeds", "pooler_output"):
            value = getattr(out, attr, None)
            if value is not None:
                return value
        raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")

    def __call__(self, image, prompt: str) -> float:
        import torch
        from PIL import Image

        pil = Image.fromarray(to_uint8_rgb(image, "image"))
        max_len = int(self.model.config.text_config.max_position_embeddings)
        text = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True, max_length=max_len)
        pixels = self.processor(images=[pil], return_tensors="pt")
        with torch.no_grad():
            img = self._embedding(self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
            txt = self._embedding(self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)))
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        return float(100.0 * cos.clamp(min=0).item())


@dataclass
class PerceptualScorers:
    """The optional perceptual metrics of one comparison run; ``None`` means no weights given."""

    lpips: LpipsScorer | None = None
    clip: ClipScorer | None = None

    @classmethod
    def from_paths(cls, lpips_weights: str | None = None, clip_model: str | None = None,
                   device: str = "cpu") -> "PerceptualScorers":
        """Load what was given; a given but missing/malformed path is an error, never a skip."""
        return cls(lpips=LpipsScorer(lpips_weights, device) if lpips_weights else None,
                   clip=ClipScorer(clip_model, device) if clip_model else None)

    def describe(self) -> dict[str, str]:
        return {
            "lpips": f"alexnet, weights: {self.lpips.weights_path}" if self.lpips else NOT_COMPUTED,
            "clip_score": f"CLIPModel from {self.clip.model_dir}" if self.clip else NOT_COMPUTED,
        }

    def lpips_score(self, reference, candidate) -> float | str:
        return self.lpips(reference, candidate) if self.lpips else NOT_COMPUTED

    def clip_score(self, image, prompt: str) -> float | str:
        return self.clip(image, prompt) if self.clip else NOT_COMPUTED
