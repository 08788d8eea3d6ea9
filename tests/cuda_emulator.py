"""Run lstmx's CUDA kernels on the CPU (``tests/cuda_emulator.h``): their logic is tested in CI, without a GPU.

:func:`compile_kernels` builds a kernel source (the very string CuPy and NVRTC compile) with g++ into a shared
library, with one launcher per kernel; :meth:`EmulatedKernels.launch` runs a kernel on NumPy arrays as
``cupy.RawKernel`` would on CuPy arrays. :func:`guarded` wraps arrays in NaN-filled margins, and
:meth:`EmulatedKernels.launch` checks the margins afterwards: a store out of bounds fails the launch, and a load
out of bounds brings a NaN into the results. Before it runs a kernel, ``launch`` checks the arguments against the
kernel's signature, read from the source (:func:`kernel_parameters`). ``tests/fake_cupy.py`` puts this behind
CuPy's ``RawKernel``, so lstmx's own wrappers run on it.

What the emulator proves and what it does not is said in the header: indexing, barrier placement and races
between barriers, yes; memory ordering, speed and the GPU's numerics, no.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any, Iterable, NamedTuple

import numpy as np

HEADER = os.path.join(os.path.dirname(__file__), "cuda_emulator.h")
COMPILER = shutil.which("g++")
COMPILE_FLAGS = ("-std=c++17", "-O1", "-fPIC", "-Wno-unknown-pragmas", "-fsanitize=alignment")
MARGIN = 64  # elements of NaN before and after each guarded array

_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;")


def host_source(source: str, kernels: Iterable[str]) -> str:
    """The CUDA source as C++ for the emulator: the dynamic shared array becomes the block's buffer, the CUDA
    headers the emulator's, and each kernel gets an ``extern "C"`` launcher."""
    if re.search(r"(?<!extern )__shared__", _SHARED.sub("", source)):
        raise ValueError("the emulator models only dynamic (extern __shared__) shared memory")
    body = _SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(emu::shared_memory());", source)
    body = body.replace("#include <cooperative_groups.h>", "")
    launchers = "".join(
        f'\nextern "C" int launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,'
        f' size_t shared, void** args, unsigned seed, int cooperative, char* error, int error_size)\n'
        f'{{ return emu::launch_kernel({name}, dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, shared, args, seed, cooperative,'
        f' error, error_size); }}\n'
        for name in kernels)
    return f'#include "{HEADER}"\n#line 1 "kernel"\n{body}\n{launchers}'  # errors name the kernel source's lines


_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)')
_C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64, "unsigned": np.uint32}


class Parameter(NamedTuple):
    name: str
    pointer: bool
    dtype: type  # the NumPy scalar type of the value, or of the pointed-to elements
    restrict: bool = False  # a __restrict__ pointer: no other argument reaches what it reaches
    writes: bool = False  # a pointer to non-const elements


def kernel_parameters(source: str) -> dict[str, list[Parameter]]:
    """Each ``extern "C" __global__`` kernel's parameters, read from its signature."""
    kernels = {}
    for name, parameters in _KERNEL.findall(re.sub(r"//[^\n]*", "", source)):  # comments hold commas and ()
        listed = []
        for declaration in parameters.split(","):
            words = re.sub(r"\b(const|__restrict__)\b|\*", " ", declaration).split()
            pointer = "*" in declaration
            listed.append(Parameter(words[-1], pointer, _C_TYPES[" ".join(words[:-1])], "__restrict__" in declaration,
                                    pointer and "const" not in declaration.split("*")[0]))
        kernels[name] = listed
    return kernels


class EmulatedKernels:
    """A compiled kernel source: :meth:`launch` runs one of its kernels."""

    def __init__(self, library: ctypes.CDLL, parameters: dict[str, list[Parameter]]) -> None:
        self.library, self.parameters = library, parameters

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, shared_mem: int = 0,
               seed: int = 0, cooperative: bool = False) -> None:
        """Runs ``name`` over ``grid`` × ``block`` threads with ``args`` (NumPy arrays, NumPy scalars, or
        ``np.uint64(0)`` for a null pointer), as ``cupy.RawKernel.__call__`` does (``cooperative``: as a kernel
        made with ``enable_cooperative_groups``, which alone may wait at a grid barrier); raises on arguments that
        do not match the kernel's signature (instead of running it on them) or that overlap where a ``__restrict__``
        pointer promises they do not, a divergent barrier, a grid barrier outside a cooperative launch, a
        misaligned access, or a store outside the arrays or the shared memory."""
        check_arguments(name, self.parameters[name], args)
        values = [_c_value(a) for a in args]
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values))
        grid3, block3 = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
        error = ctypes.create_string_buffer(256)
        function = getattr(self.library, f"launch_{name}")
        function.restype = ctypes.c_int
        status = function(*(ctypes.c_uint(v) for v in (*grid3, *block3)), ctypes.c_size_t(shared_mem), pointers,
                          ctypes.c_uint(seed), ctypes.c_int(cooperative), error, ctypes.c_int(len(error)))
        if status != 0:
            raise RuntimeError(f"{name}: {error.value.decode()}")
        for a in args:
            if isinstance(a, GuardedArray):
                a.check(name)


def check_arguments(kernel: str, parameters: list[Parameter], args: tuple) -> None:
    """Each argument as its parameter declares it: an array of its element type (C-contiguous) or a null
    pointer for a pointer, a NumPy scalar of its exact type for a value."""
    if len(args) != len(parameters):
        raise TypeError(f"{kernel} takes {len(parameters)} arguments, got {len(args)}")
    for parameter, value in zip(parameters, args):
        if parameter.pointer:
            null = isinstance(value, np.uint64) and int(value) == 0
            if not null and not (isinstance(value, np.ndarray) and value.dtype == parameter.dtype):
                raise TypeError(f"{kernel}: {parameter.name} points to {np.dtype(parameter.dtype).name}; got "
                                f"{type(value).__name__} {getattr(value, 'dtype', '')}")
        elif type(value) is not parameter.dtype:
            raise TypeError(f"{kernel}: {parameter.name} is {np.dtype(parameter.dtype).name}; got "
                            f"{type(value).__name__} {value!r}")
    arrays = [(p, a) for p, a in zip(parameters, args) if p.pointer and isinstance(a, np.ndarray)]
    for i, (first, a) in enumerate(arrays):  # what __restrict__ promises the compiler, which may reorder on it
        for second, b in arrays[i + 1:]:
            if ((first.restrict or second.restrict) and (first.writes or second.writes)
                    and np.may_share_memory(a, b)):
                raise ValueError(f"{kernel}: {first.name} and {second.name} overlap, but one of them is "
                                 f"__restrict__ and one is written through")


def _c_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError("kernel arguments must be C-contiguous")
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.uint64):
        return ctypes.c_void_p(int(value) or None)
    kinds = {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float,
             np.float64: ctypes.c_double}
    for kind, c_type in kinds.items():
        if isinstance(value, kind):
            return c_type(value.item())
    raise TypeError(f"cannot pass {type(value).__name__} to a kernel (use a NumPy array or a sized NumPy scalar)")


# A NaN with a payload of its own: arithmetic on it yields the default NaN, so a store shows even when the value
# stored is a NaN computed from the margin.
_MARGIN_BITS = {1: np.uint8(0xA5), 4: np.uint32(0x7FA5A5A5), 8: np.uint64(0x7FF5A5A5A5A5A5A5)}  # by itemsize


class GuardedArray(np.ndarray):
    """An array that lies between two margins of MARGIN marked NaNs (``margins``), checked after each launch."""

    margins: np.ndarray | None = None

    def check(self, kernel: str) -> None:
        if self.margins is not None:
            bits = self.margins.view(_MARGIN_BITS[self.itemsize].dtype)
            if not (np.all(bits[:MARGIN] == _MARGIN_BITS[self.itemsize])
                    and np.all(bits[-MARGIN:] == _MARGIN_BITS[self.itemsize])):
                raise RuntimeError(f"{kernel} stored outside an array it was given")


def guarded(array: Any, dtype: Any = None) -> GuardedArray:
    """A C-contiguous copy of ``array`` between marked NaN margins, checked after each launch it is passed to."""
    array = np.asarray(array, dtype=dtype)
    marker = _MARGIN_BITS[array.itemsize]
    buffer = np.full(array.size + 2 * MARGIN, marker, dtype=marker.dtype).view(array.dtype)
    inner = buffer[MARGIN:MARGIN + array.size].reshape(array.shape).view(GuardedArray)
    inner.margins = buffer
    inner[...] = array
    return inner


_CACHE = os.path.join(tempfile.gettempdir(), f"lstmx-cuda-emulator-{os.getuid()}")


def compile_kernels(source: str, kernels: Iterable[str]) -> EmulatedKernels:
    """The kernels of ``source`` built for the emulator (cached by content in the temp folder)."""
    if COMPILER is None:
        raise RuntimeError("the CUDA emulator needs g++")
    text = host_source(source, kernels)
    with open(HEADER, "rb") as header:
        key = hashlib.sha256(text.encode() + header.read() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:20]
    os.makedirs(_CACHE, exist_ok=True)
    library = os.path.join(_CACHE, f"{key}.so")
    if not os.path.exists(library):
        with tempfile.TemporaryDirectory(dir=_CACHE) as work:
            path = os.path.join(work, "kernels.cpp")
            with open(path, "w") as file:
                file.write(text)
            built, objects = os.path.join(work, "kernels.so"), os.path.join(work, "kernels.o")
            # compiled with the alignment check, linked without the sanitizer's runtime: the header handles it
            for command in ([COMPILER, *COMPILE_FLAGS, "-c", "-o", objects, path],
                            [COMPILER, "-shared", "-o", built, objects]):
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"g++ could not build the kernels for the emulator:\n{result.stderr[-4000:]}")
            os.replace(built, library)  # atomic: a parallel test never loads half a file
    return EmulatedKernels(ctypes.CDLL(library), kernel_parameters(source))
