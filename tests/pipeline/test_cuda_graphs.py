import pytest
import torch

from qo_testing import cuda_only, rel_error


def test_cuda_graphs_need_cuda(demo_model_dir):
    from quantomni import Omni

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        Omni(demo_model_dir("flux"), device="cpu", cuda_graphs=True, progress=False)


def test_graph_key_covers_shapes_and_values():
    from quantomni.pipeline.cuda_graph import _flatten, _rebuild

    t = []
    a = torch.zeros(2, 3)
    key = _flatten(((a,), {"x": [1, None], "flag": False}), t)
    assert t == [a]
    args, kwargs = _rebuild(key, iter([a]))
    assert args[0] is a and kwargs == {"x": [1, None], "flag": False}
    assert _flatten(((torch.zeros(2, 4),), {}), []) != _flatten(((torch.zeros(2, 3),), {}), [])


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("method", [None, "fp8", "int8"])
def test_graph_replay_matches_eager(demo_model_dir, method):
    from quantomni import Omni

    kw = dict(height=64, width=64, num_inference_steps=4, seed=3)
    eager = Omni(demo_model_dir("flux"), quantization=method, device="cuda", progress=False)
    ref = eager.generate("a cat", **kw).images[0]
    graphed = Omni(demo_model_dir("flux"), quantization=method, device="cuda", progress=False, cuda_graphs=True)
    for _ in range(2):
        img = graphed.generate("a cat", **kw).images[0]
    assert any(e.graph is not None for e in graphed.cuda_graphs.entries.values())
    import numpy as np

    a = torch.tensor(np.asarray(ref), dtype=torch.float64)
    b = torch.tensor(np.asarray(img), dtype=torch.float64)
    assert rel_error(b, a) < 0.02
