"""Float64 references and fixture builders shared by the tests/kernels/test_triton_*.py files."""
from __future__ import annotations

import os

import torch

E2M1_VALUES = torch.tensor(
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=torch.float64
)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|; NaN anywhere in out makes it NaN (never passes a < check)."""
    out = out.double()
    if torch.isnan(out).any():
        return float("nan")
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def nvfp4_dequant_f64(w_packed, w_scale, w_scale_2) -> torch.Tensor:
    """[N, K/2] uint8 (low nibble = even column) + [N, K/16] e4m3 + scalar -> float64 [N, K]."""
    n = w_packed.shape[0]
    codes = torch.stack([w_packed & 15, w_packed >> 4], dim=-1).reshape(n, -1).long()
    return E2M1_VALUES[codes] * w_scale.double().repeat_interleave(16, dim=1) * w_scale_2.double()


def random_nvfp4(n: int, k: int, gen: torch.Generator):
    w_packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
    w_scale = (torch.rand(n, k // 16, generator=gen) * 2 + 0.01).to(torch.float8_e4m3fn)
    w_scale_2 = torch.tensor([0.37], dtype=torch.float32)
    return w_packed, w_scale, w_scale_2


def random_q8_0(n: int, k: int, gen: torch.Generator):
    """GGUF Q8_0 bytes [N, K/32*34] (f16 scale then 32 int8 per block) and their float64 dequant."""
    d = (torch.rand(n, k // 32, generator=gen) * 0.02 + 0.001).to(torch.float16)
    qs = torch.randint(-128, 128, (n, k // 32, 32), dtype=torch.int8, generator=gen)
    blocks = torch.cat([d.view(torch.uint8).reshape(n, k // 32, 2), qs.view(torch.uint8)], dim=-1)
    return blocks.reshape(n, -1).contiguous(), (d.double()[..., None] * qs.double()).reshape(n, k)


_CASE_RESULTS: dict = {}


def _run_all_cases(timeout: int) -> dict:
    """Run every file in triton_interp_cases/ in ONE pytest subprocess under TRITON_INTERPRET=1.

    Why a subprocess: the interpreter must be switched on before triton is first imported, and
    switching it on inside this process would also reroute any real-GPU kernel tests. One run for
    all files pays the torch+triton import once. Returns {case module name: [failure texts]}.
    """
    import subprocess
    import sys
    import tempfile
    import xml.etree.ElementTree as ET
    from pathlib import Path

    case_dir = Path(__file__).parent / "triton_interp_cases"
    files = sorted(str(p) for p in case_dir.glob("*_cases.py"))
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = os.path.join(tmp, "cases.xml")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}", *files],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        results = {Path(f).stem: [] for f in files}
        if not os.path.exists(xml_path):
            raise AssertionError(f"interpreter case run produced no report:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1]
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                results.setdefault(module, []).append(f"{case.get('name')}: {(bad.text or '')[-3000:]}")
        results["__returncode__"] = proc.returncode
        results["__output__"] = proc.stdout[-3000:]
    return results


_COMPILE_PROC: list = []
_COMPILE_CODE = (
    "import json\n"
    "from quantomni.kernels.triton.sm90_compile_check import compile_for_sm90\n"
    "print(json.dumps(compile_for_sm90()))\n"
)


def start_sm90_compile_check() -> None:
    """Start the sm_90 ahead-of-time compile check in the background (it overlaps the interpreter run)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if _COMPILE_PROC or importlib.util.find_spec("triton.backends.nvidia") is None:
        return
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    import atexit

    proc = subprocess.Popen([sys.executable, "-c", _COMPILE_CODE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _COMPILE_PROC.append(proc)
    atexit.register(lambda: proc.poll() is None and proc.kill())  # deselected compile test: stop it


def sm90_compile_check_result(timeout: int = 300):
    """(returncode, stdout, stderr) of the compile check, starting it if needed."""
    start_sm90_compile_check()
    proc = _COMPILE_PROC[0]
    out, err = proc.communicate(timeout=timeout)
    _COMPILE_PROC[0] = type("Done", (), {"communicate": lambda self, timeout=None: (out, err),
                                         "returncode": proc.returncode})()
    return proc.returncode, out, err


def run_interpreter_cases(case_file: str, timeout: int = 300) -> None:
    """Assert that every case in tests/kernels/triton_interp_cases/<case_file> passed under the interpreter."""
    if not _CASE_RESULTS:
        start_sm90_compile_check()
        _CASE_RESULTS.update(_run_all_cases(timeout))
    module = case_file.removesuffix(".py")
    if module not in _CASE_RESULTS:
        raise AssertionError(f"no interpreter results for {case_file}:\n{_CASE_RESULTS['__output__']}")
    failures = _CASE_RESULTS[module]
    if failures:
        raise AssertionError(f"{len(failures)} interpreter case(s) in {case_file} failed:\n" + "\n\n".join(failures))


def random_q4_k(n: int, k: int, gen: torch.Generator):
    """GGUF Q4_K bytes [N, K/256*144] with random codes/6-bit scales and sane f16 d/dmin.

    Returns the bytes only; tests dequantize them with the gguf package (an independent reference).
    """
    nb = k // 256
    raw = torch.randint(0, 256, (n, nb, 144), dtype=torch.uint8, generator=gen)
    d = (torch.rand(n, nb, generator=gen) * 0.01 + 0.001).to(torch.float16)
    dmin = (torch.rand(n, nb, generator=gen) * 0.01).to(torch.float16)
    raw[:, :, 0:2] = d.view(torch.uint8).reshape(n, nb, 2)
    raw[:, :, 2:4] = dmin.view(torch.uint8).reshape(n, nb, 2)
    return raw.reshape(n, -1).contiguous()
