"""Cross-check of our torch LPIPS against torchmetrics' implementation (needs torchvision; skipped without).

Both sides use the SAME RANDOM backbone and heads (``pnet_rand=True, pretrained=False``: nothing is
downloaded or unpickled), exported to our safetensors layout.  The value is not LPIPS; the test
checks that the two implementations of the formula agree.
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


def test_lpips_matches_torchmetrics_on_same_random_weights(tmp_path):
    pytest.importorskip("torchvision")
    lpips_mod = pytest.importorskip("torchmetrics.functional.image.lpips")
    from safetensors.torch import save_file

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
        assert ours(a, b) == pytest.approx(expected, rel=1e-4)
