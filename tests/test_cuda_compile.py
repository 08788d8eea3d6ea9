"""Every CUDA kernel source, in every variant (dtypes, TF32), compiles with NVRTC for sm_80 and sm_90: no GPU needed.

NVRTC comes from the PyPI wheel ``nvidia-cuda-nvrtc-cu12`` (in the ``dev`` extra) and is called through ctypes;
CuPy's own compile path asks the driver first and so cannot run on a machine without a GPU. Without the wheel
(another platform) the test skips with the reason.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import site

import pytest

from lstmx.kernels import cuda_sources

ARCHITECTURES = ["sm_80", "sm_90", "compute_90"]


NVIDIA = [os.path.join(p, "nvidia") for p in (*site.getsitepackages(), site.getusersitepackages())]


def _load_nvrtc() -> ctypes.CDLL | None:
    for folder in NVIDIA:
        for path in sorted(glob.glob(os.path.join(folder, "cuda_nvrtc", "lib", "libnvrtc.so*"))):
            if "builtins" not in path and "alt" not in path:
                return ctypes.CDLL(path)
    return None


def _include_folders() -> list[str]:
    """cooperative_groups.h (nvidia-cuda-runtime-cu12) and the nv/target header it includes (nvidia-cuda-cccl-cu12)."""
    wanted = {"cuda_runtime": "cooperative_groups.h", "cuda_cccl": os.path.join("nv", "target")}
    found = {}
    for folder in NVIDIA:
        for package, header in wanted.items():
            if package not in found and os.path.exists(os.path.join(folder, package, "include", header)):
                found[package] = os.path.join(folder, package, "include")
    return list(found.values()) if len(found) == len(wanted) else []


NVRTC = _load_nvrtc()
INCLUDES = _include_folders()
pytestmark = pytest.mark.skipif(
    NVRTC is None or not INCLUDES,
    reason="NVRTC or CUDA headers not found (pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 "
           "nvidia-cuda-cccl-cu12, all in the dev extra)")


def compile_source(source: str, name: str, architecture: str, *extra: str) -> tuple[int, str, bytes]:
    """``(status, log, ptx)`` of compiling ``source`` with NVRTC for ``architecture`` (``extra``: more options)."""
    program = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0, None, None) == 0
    options = [f"--gpu-architecture={architecture}".encode(), b"--std=c++17", *(f"-I{i}".encode() for i in INCLUDES),
               *(option.encode() for option in extra)]
    array = (ctypes.c_char_p * len(options))(*options)
    status = NVRTC.nvrtcCompileProgram(program, len(options), array)
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(program, log)
    ptx = b""
    if status == 0:
        NVRTC.nvrtcGetPTXSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetPTX(program, buffer)
        ptx = buffer.value
    NVRTC.nvrtcDestroyProgram(ctypes.byref(program))
    return status, log.value.decode(errors="replace"), ptx


VARIANTS = [(kind, variant) for kind in sorted(cuda_sources.SOURCES) for variant in cuda_sources.variants(kind)]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("kind,variant", VARIANTS)
def test_every_kernel_compiles(kind, variant, architecture):
    status, log, ptx = compile_source(cuda_sources.source(kind, variant), f"lstmx_{kind}_{variant}", architecture)
    assert status == 0, f"NVRTC failed for the {kind} kernels in {variant} on {architecture}:\n{log}"
    for kernel in cuda_sources.SOURCES[kind]:  # extern "C": the names CuPy looks up are in the PTX as written
        assert f".entry {cuda_sources.kernel_name(kernel, variant)}(".encode() in ptx


def test_the_tf32_variant_runs_its_products_on_tensor_cores():
    """The "tf32" tiled kernels issue mma.sync in TF32 and round their operands; the float32 ones do neither."""
    for variant, expected in (("tf32", True), ("float32", False)):
        status, log, ptx = compile_source(cuda_sources.source("tiled", variant), "tiled", "sm_90")
        assert status == 0, log
        assert (b"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx) == expected
        assert (b"cvt.rna.tf32.f32" in ptx) == expected


def test_only_the_tiled_kernels_have_a_tf32_variant():
    with pytest.raises(ValueError, match="the stepwise kernels come in float32, float64, not 'tf32'"):
        cuda_sources.source("stepwise", "tf32")


def test_a_broken_kernel_is_reported_with_its_line():
    """The check can fail: a type error in the source is an NVRTC error naming the line."""
    broken = cuda_sources.source("stepwise", "float32").replace("tc = tanhf(c)", "tc = tanhf(c, c)")
    assert broken != cuda_sources.source("stepwise", "float32")
    status, log, _ = compile_source(broken, "broken", "sm_90")
    assert status != 0 and "broken.cu(" in log


@pytest.mark.parametrize("kind,variant", VARIANTS)
def test_no_kernel_spills_registers_on_sm_90(kind, variant):
    """ptxas (run by NVRTC for a real architecture) reports each kernel's registers and local-memory spills:
    none may spill (a spill turns register traffic into memory traffic inside the time-step loop)."""
    status, log, _ = compile_source(cuda_sources.source(kind, variant), f"lstmx_{kind}_{variant}", "sm_90",
                                    "--ptxas-options=-v")
    assert status == 0, log
    kernels = re.findall(r"Compiling entry function '(\w+)'", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
    assert len(kernels) == len(spills) == len(registers) == len(cuda_sources.SOURCES[kind]), log
    for kernel, (stores, loads), count in zip(kernels, spills, registers):
        assert (stores, loads) == ("0", "0"), f"{kernel} spills {stores} bytes ({count} registers)"
