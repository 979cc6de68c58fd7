"""Run-time compiled CUDA C++ kernels: NVRTC to a cubin, the driver API to load and launch it.

No build step and no compiler on the user's machine: NVRTC ships with PyTorch's CUDA wheels
(``nvidia-cuda-nvrtc``) and the driver library is always there when CUDA is. Compilation needs no
GPU (tests compile the sources on CPU-only machines when NVRTC is installed); loading and launching
do. Launches go to the current torch stream, so they are captured by CUDA graphs like any kernel.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys
import threading

import torch


class CudaRuntimeError(RuntimeError):
    pass


def _candidate_nvrtc_paths() -> list[str]:
    env = os.environ.get("QUANTOMNI_NVRTC")
    paths = [env] if env else []
    major = (torch.version.cuda or "13").split(".")[0]
    paths += [f"libnvrtc.so.{major}", "libnvrtc.so"]
    for site in sys.path:  # pip's nvidia-cuda-nvrtc wheels
        paths += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "lib", "libnvrtc.so.*")))
        paths += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    return [p for p in paths if "builtins" not in p and ".alt." not in p]


@functools.cache
def nvrtc() -> ctypes.CDLL:
    errors = []
    for path in _candidate_nvrtc_paths():
        try:
            if os.path.dirname(path):  # NVRTC dlopens its builtins by soname: load them from the same folder first
                for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.*"))):
                    if ".alt." not in builtins:
                        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    raise CudaRuntimeError("NVRTC (libnvrtc) not found; tried " + "; ".join(errors[:4]))


def nvrtc_available() -> tuple[bool, str]:
    try:
        nvrtc()
    except CudaRuntimeError as exc:
        return False, str(exc)
    return True, "NVRTC found"


def _check_nvrtc(lib, res: int, what: str) -> None:
    if res != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise CudaRuntimeError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(res).decode()}")


_OPTIONS = ("--std=c++17", "-default-device")


def compile_cubin(source: str, name_expressions: list[str], arch: str, options: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
    """Compile ``source`` for ``arch`` (e.g. "sm_90"). Returns (cubin, {name expression: lowered name})."""
    lib = nvrtc()
    prog = ctypes.c_void_p()
    _check_nvrtc(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"quantomni.cu", 0, None, None), "create")
    try:
        for expr in name_expressions:
            _check_nvrtc(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"name expression {expr}")
        opts = [f"--gpu-architecture={arch}", *_OPTIONS, *options]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        res = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if res != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise CudaRuntimeError(f"NVRTC compile for {arch} failed:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _check_nvrtc(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
        cubin = ctypes.create_string_buffer(size.value)
        _check_nvrtc(lib, lib.nvrtcGetCUBIN(prog, cubin), "cubin")
        lowered = {}
        for expr in name_expressions:
            name = ctypes.c_char_p()
            _check_nvrtc(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)), f"lowered name {expr}")
            lowered[expr] = name.value.decode()
        return cubin.raw, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@functools.cache
def _libcuda() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as exc:  # pragma: no cover - CUDA torch without a driver cannot get here
        raise CudaRuntimeError(f"CUDA driver library not found: {exc}") from exc


def _check_cu(res: int, what: str) -> None:
    if res != 0:
        lib = _libcuda()
        msg = ctypes.c_char_p()
        lib.cuGetErrorString(res, ctypes.byref(msg))
        raise CudaRuntimeError(f"CUDA {what} failed: {msg.value.decode() if msg.value else res}")


class Module:
    """A cubin loaded into the current context of one device; ``function(name)`` gives launchables."""

    def __init__(self, cubin: bytes, device: torch.device):
        self.device = device
        self._cubin = cubin  # the driver copies it, but keep it for debugging
        lib = _libcuda()
        with torch.cuda.device(device):
            torch.cuda.current_stream(device)  # make sure torch created the primary context
            self._module = ctypes.c_void_p()
            _check_cu(lib.cuModuleLoadData(ctypes.byref(self._module), cubin), "module load")
        self._functions: dict[str, ctypes.c_void_p] = {}

    def function(self, lowered_name: str) -> ctypes.c_void_p:
        fn = self._functions.get(lowered_name)
        if fn is None:
            fn = ctypes.c_void_p()
            _check_cu(_libcuda().cuModuleGetFunction(ctypes.byref(fn), self._module, lowered_name.encode()),
                      f"get function {lowered_name}")
            self._functions[lowered_name] = fn
        return fn


try:
    from torch._C import _cuda_getCurrentRawStream as _raw_stream  # what Inductor's generated code uses
except ImportError:  # pragma: no cover - CPU-only builds
    _raw_stream = None


def launch(fn: ctypes.c_void_p, grid: tuple[int, int, int], block: tuple[int, int, int], args: list,
           device: torch.device | None = None, shared_mem: int = 0) -> None:
    """Launch on the current torch stream of ``device`` (default: the first tensor argument's).
    Tensors are passed as pointers, Python ints as 32-bit ints, floats as 32-bit floats."""
    holders = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if device is None:
                device = a.device
            holders.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, (bool, int)):
            holders.append(ctypes.c_int32(int(a)))
        elif isinstance(a, float):
            holders.append(ctypes.c_float(a))
        else:
            raise TypeError(f"unsupported kernel argument {type(a).__name__}")
    params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
    current = torch.cuda.current_device()
    index = device.index if device is not None and device.index is not None else current
    if index != current:  # the module and the stream belong to that device's context
        with torch.cuda.device(index):
            return launch(fn, grid, block, args, torch.device("cuda", index), shared_mem)
    stream = _raw_stream(index) if _raw_stream is not None else torch.cuda.current_stream(index).cuda_stream
    _check_cu(
        _libcuda().cuLaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared_mem,
                                  ctypes.c_void_p(stream), params, None),
        "kernel launch",
    )


_lock = threading.Lock()
_modules: dict[tuple[str, int], tuple[Module, dict[str, str]]] = {}


def load(key: str, source_fn, name_expressions: list[str], device: torch.device) -> tuple[Module, dict[str, str]]:
    """Compile (once per process and architecture) and load (once per device) a source."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        hit = _modules.get((key, index))
        if hit is None:
            major, minor = torch.cuda.get_device_capability(index)
            cubin, lowered = _compile_cached(key, source_fn(), tuple(name_expressions), f"sm_{major}{minor}")
            hit = (Module(cubin, torch.device("cuda", index)), lowered)
            _modules[(key, index)] = hit
        return hit


def cache_dir() -> str | None:
    """Where compiled cubins are kept between processes: ``QUANTOMNI_CUDA_CACHE`` (empty: off),
    else ``$XDG_CACHE_HOME/quantomni/cuda`` or ``~/.cache/quantomni/cuda``."""
    env = os.environ.get("QUANTOMNI_CUDA_CACHE")
    if env is not None:
        return env or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "quantomni", "cuda")


def _nvrtc_version() -> str:
    lib = nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:  # pragma: no cover
        return "unknown"
    return f"{major.value}.{minor.value}"


@functools.cache
def _compile_cached(key: str, source: str, names: tuple[str, ...], arch: str) -> tuple[bytes, dict[str, str]]:
    """Compile once per process; across processes, reuse a cubin from ``cache_dir()`` keyed by the
    source, the names, the architecture and the NVRTC version (a corrupt or unreadable entry is
    recompiled and rewritten)."""
    import hashlib
    import json
    import tempfile

    folder = cache_dir()
    digest = hashlib.sha256("\0".join([source, *names, arch, *_OPTIONS, _nvrtc_version()]).encode()).hexdigest()[:32]
    path = os.path.join(folder, f"{key}-{arch}-{digest}") if folder else None
    if path and os.path.isfile(path + ".cubin") and os.path.isfile(path + ".json"):
        try:
            with open(path + ".json", encoding="utf-8") as f:
                lowered = json.load(f)
            with open(path + ".cubin", "rb") as f:
                cubin = f.read()
            if isinstance(lowered, dict) and set(lowered) == set(names) and cubin:
                return cubin, lowered
        except (OSError, ValueError):
            pass
    cubin, lowered = compile_cubin(source, list(names), arch)
    if path:
        try:
            os.makedirs(folder, exist_ok=True)
            for ext, data, mode in ((".cubin", cubin, "wb"), (".json", json.dumps(lowered), "w")):
                fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
                with os.fdopen(fd, mode) as f:
                    f.write(data)
                os.replace(tmp, path + ext)  # atomic: a concurrent reader sees the old or the new file
        except OSError:
            pass  # a read-only home: compile again next time
    return cubin, lowered
