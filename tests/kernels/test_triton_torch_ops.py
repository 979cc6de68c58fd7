"""Custom-op wrappers (torch.library) for the Triton kernels: fullgraph torch.compile, no graph breaks.
The case runs on the CPU interpreter in a subprocess (triton_interp_cases/torch_ops_cases.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("triton")

from triton_kernel_refs import run_interpreter_cases  # noqa: E402


def test_interpreter_cases():
    run_interpreter_cases("torch_ops_cases.py")


def test_importing_quantomni_kernels_needs_no_triton_and_registers_nothing():
    import subprocess
    from pathlib import Path

    code = (
        "import sys; sys.modules['triton'] = None\n"  # any 'import triton' now raises ImportError
        "import quantomni.kernels.triton.act_quant, quantomni.kernels.triton.nvfp4_gemm\n"
        "import quantomni.kernels.triton.gguf_gemm, quantomni.kernels.triton.fp8_gemm\n"
        "import quantomni.kernels.triton.torch_ops as t\n"
        "assert t._REGISTERED is False\n"
        "import torch\n"
        "try:\n"
        "    quantomni.kernels.triton.nvfp4_gemm._build(False)\n"
        "except ImportError as e:\n"
        "    assert 'pip install triton' in str(e)\n"
        "else:\n"
        "    raise SystemExit('expected ImportError')\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
