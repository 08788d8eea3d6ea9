"""Every CUDA kernel source, in every variant (dtypes, TF32), compiles with NVRTC: no GPU needed.

Two NVRTCs from PyPI wheels (both in the ``dev`` extra), called through ctypes: CUDA 12's
(``nvidia-cuda-nvrtc-cu12``) compiles for sm_80, sm_90 and compute_90, and CUDA 13's (``nvidia-cuda-nvrtc``, what
the CUDA 13 CuPy on an H100 compiles with) for sm_90. Each reports its ptxas's registers and spills. CuPy's own
compile path asks the driver first and so cannot run on a machine without a GPU. Without the wheels (another
platform) the tests skip with the reason.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import os
import re
import site
from typing import NamedTuple

import pytest

from lstmx.kernels.cupy import cuda_sources

NVIDIA = [os.path.join(p, "nvidia") for p in (*site.getsitepackages(), site.getusersitepackages())]


class Toolkit(NamedTuple):
    name: str
    nvrtc: ctypes.CDLL
    includes: list[str]  # cooperative_groups.h and the nv/target header it includes
    architectures: list[str]


def _first(pattern: str) -> str | None:
    """The first file matching ``pattern`` under site-packages/nvidia, or None."""
    return next((path for folder in NVIDIA for path in sorted(glob.glob(os.path.join(folder, pattern)))), None)


def _toolkit(name: str, library: str, builtins: str, headers: tuple[tuple[str, str], ...],
             architectures: list[str]) -> Toolkit | None:
    """``library``, ``builtins`` and each header's include folder are globs under site-packages/nvidia."""
    nvrtc, builtin = _first(library), _first(builtins)
    includes = [_first(os.path.join(folder, header)) for folder, header in headers]
    if nvrtc is None or builtin is None or None in includes:
        return None
    ctypes.CDLL(builtin)  # NVRTC opens its builtins by file name: loaded here, it is found without a search path
    folders = [path.removesuffix(header) for path, (_, header) in zip(includes, headers)]
    return Toolkit(name, ctypes.CDLL(nvrtc), folders, architectures)


TOOLKITS = [toolkit for toolkit in (
    _toolkit("CUDA 12", "cuda_nvrtc/lib/libnvrtc.so.12", "cuda_nvrtc/lib/libnvrtc-builtins.so.12*",
             (("cuda_runtime/include", "cooperative_groups.h"), ("cuda_cccl/include", "nv/target")),
             ["sm_80", "sm_90", "compute_90"]),
    _toolkit("CUDA 13", "cu13/lib/libnvrtc.so.13", "cu13/lib/libnvrtc-builtins.so.13*",
             (("cu13/include", "cooperative_groups.h"), ("cu13/include/cccl", "nv/target")), ["sm_90"]),
) if toolkit is not None]
pytestmark = pytest.mark.skipif(
    not TOOLKITS, reason="NVRTC or CUDA headers not found (pip install nvidia-cuda-nvrtc-cu12 "
                         "nvidia-cuda-runtime-cu12 nvidia-cuda-cccl-cu12, or CUDA 13's nvidia-cuda-nvrtc "
                         "nvidia-cuda-runtime nvidia-cuda-cccl: all in the dev extra)")
NEWEST = TOOLKITS[-1] if TOOLKITS else None


def compile_source(source: str, name: str, architecture: str, *extra: str,
                   toolkit: Toolkit | None = None) -> tuple[int, str, bytes]:
    """``(status, log, ptx)`` of compiling ``source`` with NVRTC for ``architecture`` (``extra``: more options;
    ``toolkit``: the newest found unless given)."""
    toolkit = toolkit or NEWEST
    nvrtc = toolkit.nvrtc
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0, None, None) == 0
    options = [f"--gpu-architecture={architecture}".encode(), b"--std=c++17",
               *(f"-I{folder}".encode() for folder in toolkit.includes),
               *(option.encode() for option in extra)]
    array = (ctypes.c_char_p * len(options))(*options)
    status = nvrtc.nvrtcCompileProgram(program, len(options), array)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    ptx = b""
    if status == 0:
        nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(program, buffer)
        ptx = buffer.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return status, log.value.decode(errors="replace"), ptx


VARIANTS = [(kind, variant) for kind in sorted(cuda_sources.SOURCES) for variant in cuda_sources.variants(kind)]


TARGETS = [pytest.param(toolkit, architecture, id=f"{toolkit.name}-{architecture}".replace(" ", ""))
           for toolkit in TOOLKITS for architecture in toolkit.architectures]


WHEELS = {"CUDA 12": ("nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cuda-cccl-cu12"),
          "CUDA 13": ("nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cuda-cccl")}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_every_installed_toolkit_is_found():
    """Where a CUDA version's three wheels are installed (the dev extra brings both), its NVRTC and headers are
    found: the globs above follow the wheels' layout, and neither version's checks skip unnoticed."""
    installed = [name for name, wheels in WHEELS.items() if all(map(_installed, wheels))]
    assert set(installed) <= {toolkit.name for toolkit in TOOLKITS}


@pytest.mark.parametrize("toolkit,architecture", TARGETS)
@pytest.mark.parametrize("kind,variant", VARIANTS)
def test_every_kernel_compiles_without_spilling_registers(kind, variant, toolkit, architecture):
    """For a real architecture (sm_*), ptxas reports each kernel's registers and local-memory spills: none may
    spill (a spill turns register traffic into memory traffic inside the time-step loop). Each CUDA version's
    ptxas allocates registers its own way, so both are asked."""
    real = architecture.startswith("sm_")
    status, log, ptx = compile_source(cuda_sources.source(kind, variant), f"lstmx_{kind}_{variant}", architecture,
                                      *(["--ptxas-options=-v"] if real else []), toolkit=toolkit)
    assert status == 0, f"{toolkit.name} NVRTC failed for the {kind} kernels in {variant} on {architecture}:\n{log}"
    for kernel in cuda_sources.SOURCES[kind]:  # extern "C": the names CuPy looks up are in the PTX as written
        assert f".entry {cuda_sources.kernel_name(kernel, variant)}(".encode() in ptx
    if real:
        kernels = re.findall(r"Compiling entry function '(\w+)'", log)
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        registers = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
        assert len(kernels) == len(spills) == len(registers) == len(cuda_sources.SOURCES[kind]), log
        for kernel, (stores, loads), count in zip(kernels, spills, registers):
            assert (stores, loads) == ("0", "0"), f"{kernel} spills {stores} bytes ({count} registers, {toolkit.name})"


def test_the_mma_variants_run_their_products_on_tensor_cores():
    """The "tf32", "bf16" and "fp16" tiled kernels issue mma.sync in TF32; "tf32" rounds its operands with
    cvt.rna.tf32, the 16-bit ones on the bits (no cvt to TF32); the float32 ones do neither."""
    for variant, mma, cvt in (("tf32", True, True), ("bf16", True, False), ("fp16", True, False),
                              ("float32", False, False)):
        status, log, ptx = compile_source(cuda_sources.source("tiled", variant), "tiled", "sm_90")
        assert status == 0, log
        assert (b"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx) == mma, variant
        assert (b"cvt.rna.tf32.f32" in ptx) == cvt, variant


def test_only_the_tiled_kernels_have_a_tf32_variant():
    with pytest.raises(ValueError, match="the stepwise kernels come in float32, float64, not 'tf32'"):
        cuda_sources.source("stepwise", "tf32")


def test_a_broken_kernel_is_reported_with_its_line():
    """The check can fail: a type error in the source is an NVRTC error naming the line."""
    broken = cuda_sources.source("stepwise", "float32").replace("tc = tanhf(c)", "tc = tanhf(c, c)")
    assert broken != cuda_sources.source("stepwise", "float32")
    status, log, _ = compile_source(broken, "broken", "sm_90")
    assert status != 0 and "broken.cu(" in log
