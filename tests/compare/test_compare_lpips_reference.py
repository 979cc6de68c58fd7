"""Cross-check of our torch LPIPS against torchmetrics' independent implementation of the formula.

Both sides use the SAME RANDOM backbone and heads (``pnet_rand=True, pretrained=False``: nothing is
downloaded or unpickled), exported to our safetensors layout.  torchmetrics takes its backbone from
torchvision, which does not import beside our CPU torch, so the test hands it an AlexNet feature
stack with torchvision's layout.  The value is not LPIPS; the test checks that the two
implementations (input scaling, layer taps, normalisation, heads, spatial mean) agree.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from compare_fakes import candidate_pixels  # noqa: E402

from quantomni.compare.perceptual import LpipsScorer  # noqa: E402

# torchvision alexnet().features index -> torchmetrics Alexnet slice holding it
_SLICE_OF = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def _alexnet_features() -> torch.nn.Sequential:
    """torchvision's ``alexnet().features`` layout (indices 0..12), random init."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


def test_lpips_matches_torchmetrics_on_same_random_weights(tmp_path, monkeypatch):
    lpips_mod = pytest.importorskip("torchmetrics.functional.image.lpips")
    from safetensors.torch import save_file

    monkeypatch.setattr(lpips_mod, "_get_tv_model_features", lambda net, pretrained=False: _alexnet_features())

    torch.manual_seed(0)
    ref = lpips_mod._LPIPS(pretrained=False, net="alex", pnet_rand=True, use_dropout=True).eval()
    state = ref.state_dict()
    with torch.no_grad():
        for k in range(5):
            state[f"lin{k}.model.1.weight"].abs_()  # LPIPS heads are non-negative
    tensors = {}
    for idx, s in _SLICE_OF.items():
        for part in ("weight", "bias"):
            tensors[f"features.{idx}.{part}"] = state[f"net.slice{s}.{idx}.{part}"].contiguous()
    for k in range(5):
        tensors[f"lin{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"].contiguous()
    path = tmp_path / "random_alex_lpips.safetensors"
    save_file(tensors, str(path))

    ours = LpipsScorer(str(path))
    for sigma in (4.0, 30.0):
        a = candidate_pixels("p", 1, 64, 96, 0.0)
        b = candidate_pixels("p", 1, 64, 96, sigma)
        ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1
        tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            expected = float(ref(ta, tb).squeeze())
        got = ours(a, b)
        assert got == pytest.approx(expected, rel=1e-4)
