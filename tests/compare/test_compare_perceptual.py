"""LPIPS / CLIP plumbing.

PLUMBING ONLY: every backbone here has RANDOM weights built by the test.  The numbers they give
are not LPIPS or CLIP scores; the tests check loading, error messages, the formula's invariants
and that the values flow into the report.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from compare_fakes import KNOWN_METHODS, candidate_pixels, make_factory  # noqa: E402

from quantomni.compare.cases import build_cases  # noqa: E402
from quantomni.compare.errors import CompareInputError  # noqa: E402
from quantomni.compare.perceptual import NOT_COMPUTED, ClipScorer, LpipsScorer, expected_lpips_shapes  # noqa: E402
from quantomni.compare.report import write_report  # noqa: E402
from quantomni.compare.runner import CompareSpec, run_comparison  # noqa: E402


def _random_lpips_file(path, rename_heads=False):
    """RANDOM AlexNet + RANDOM non-negative heads, in the documented layout (plumbing only)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in expected_lpips_shapes().items():
        t = torch.randn(*shape, generator=g) * 0.1
        if name.startswith("lin"):
            t = t.abs()
            if rename_heads:
                name = name.replace(".weight", ".model.1.weight")
        tensors[name] = t.contiguous()
    save_file(tensors, str(path))
    return tensors


@pytest.fixture(scope="module")
def random_clip_dir(tmp_path_factory):
    """A tiny CLIPModel with RANDOM weights + byte-level tokenizer, saved like a real one (plumbing only)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    d = tmp_path_factory.mktemp("random_clip")
    CLIPModel(config).save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(d)
    return str(d)


def test_lpips_formula_invariants_with_random_backbone(tmp_path):
    path = tmp_path / "random_lpips.safetensors"
    _random_lpips_file(path)
    scorer = LpipsScorer(str(path))
    a = candidate_pixels("p", 0, 64, 64, 0.0)
    small = candidate_pixels("p", 0, 64, 64, 4.0)
    large = candidate_pixels("p", 0, 64, 64, 40.0)
    assert scorer(a, a) == pytest.approx(0.0, abs=1e-6)
    d_small, d_large = scorer(a, small), scorer(a, large)
    assert 0 < d_small < d_large
    assert scorer(small, a) == pytest.approx(d_small, rel=1e-5)  # symmetric
    path2 = tmp_path / "renamed.safetensors"
    _random_lpips_file(path2, rename_heads=True)  # lpips-package head names are accepted
    assert LpipsScorer(str(path2))(a, small) == pytest.approx(d_small, rel=1e-5)


def test_lpips_bad_weights_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CompareInputError, match="--lpips-weights: file .* does not exist"):
        LpipsScorer(str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CompareInputError, match="not a readable safetensors file"):
        LpipsScorer(str(junk))
    tensors = _random_lpips_file(tmp_path / "ok.safetensors")
    partial = dict(tensors)
    del partial["lin3.weight"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CompareInputError, match=r"lacks tensor 'lin3.weight' \(expected shape \[1, 256, 1, 1\]\)"):
        LpipsScorer(str(tmp_path / "partial.safetensors"))
    partial["lin3.weight"] = torch.zeros(1, 255, 1, 1)
    save_file(partial, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CompareInputError, match=r"'lin3.weight'.*shape \[1, 255, 1, 1\]"):
        LpipsScorer(str(tmp_path / "shape.safetensors"))


def test_clip_score_plumbing_matches_formula(random_clip_dir):
    scorer = ClipScorer(random_clip_dir)
    img = Image.fromarray(candidate_pixels("p", 0, 48, 48, 0.0))
    score = scorer(img, "a photo of a cat")
    proc, model = scorer.processor, scorer.model
    with torch.no_grad():
        i = model.get_image_features(pixel_values=proc(images=[img], return_tensors="pt")["pixel_values"])
        t = model.get_text_features(**proc(text=["a photo of a cat"], return_tensors="pt", padding=True))
    i = i if isinstance(i, torch.Tensor) else i.pooler_output
    t = t if isinstance(t, torch.Tensor) else t.pooler_output
    expected = 100 * max(torch.nn.functional.cosine_similarity(i, t).item(), 0.0)
    assert score == pytest.approx(expected, abs=1e-4)
    assert 0.0 <= score <= 100.0


def test_clip_model_dir_errors(tmp_path):
    with pytest.raises(CompareInputError, match="--clip-model: directory .* does not exist"):
        ClipScorer(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareInputError, match="could not load a CLIPModel"):
        ClipScorer(str(tmp_path / "empty"))


def test_runner_reports_perceptual_numbers_when_weights_given(random_clip_dir, tmp_path):
    lp = tmp_path / "random_lpips.safetensors"
    _random_lpips_file(lp)
    model = tmp_path / "m"
    model.mkdir()
    cases = build_cases(str(model), ["fp8", "bad"], known_methods=KNOWN_METHODS)
    spec = CompareSpec(cases=cases, prompts=["a cat", "a dog"], seeds=[0], warmup=0,
                       lpips_weights=str(lp), clip_model=random_clip_dir)
    report = run_comparison(spec, engine_factory=make_factory(), progress=False)
    fp8, bad = report.cases
    assert 0 < fp8["mean"]["lpips"] < bad["mean"]["lpips"]
    for case in report.cases:
        for p in case["per_prompt"]:
            assert p["clip_score_delta"] == pytest.approx(p["clip_score"] - p["clip_score_baseline"])
    paths = write_report(report, tmp_path / "out")
    assert NOT_COMPUTED not in paths["md"].read_text()
    assert NOT_COMPUTED not in paths["json"].read_text()
    assert json.loads(paths["json"].read_text())["perceptual"]["lpips"].startswith("alexnet, weights:")
    Image.open(paths["tradeoff"]).load()
