"""Array namespace and device, resolved once at the public boundary and passed down.

Every public entry point turns its ``backend=`` argument (a name, a namespace or an array) into a
:class:`Backend` and hands it to the pure functions below it. Arrays from two backends or two devices are
refused here with a clear error, never deep inside a matmul.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

BACKEND_NAMES = ("numpy", "cupy", "array_api_strict", "torch")


class BackendError(RuntimeError):
    """A backend was asked for that cannot run here (not installed, no GPU, unknown name)."""


class MixedBackendError(TypeError):
    """Arrays of two namespaces or two devices met in one call."""


class Backend(NamedTuple):
    """The array namespace (Array API compatible), its device, a short name for messages, and the format the
    generic path's matrix products take their operands in.

    ``operands="bf16"`` (a model's ``precision="bf16"``, set at its boundary) rounds both operands of every
    product :meth:`matmul` runs to bfloat16 and sums the products in the arrays' own float32, as a tensor core
    multiplies bfloat16 with float32 accumulation; everything else (gates, cell state, loss, weights) stays float32.
    ``operands="fp16"`` does the same with IEEE half precision (its narrower range included).
    """

    xp: Any
    device: Any
    name: str
    operands: str = "float32"  # "float32", "bf16" or "fp16": see above

    def operand(self, values: Any) -> Any:
        """``values`` in this backend's operand format (rounded to bfloat16 under "bf16", to half precision under
        "fp16", else as they are): for a factor used in many products, such as W_h in every step, rounded once."""
        if self.operands == "bf16":
            return round_to_bfloat16(values)
        if self.operands == "fp16":
            return round_to_float16(self.xp, values)
        return values

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` with both operands in this backend's operand format."""
        return self.operand(a) @ self.operand(b)

    def asarray(self, values: Any, dtype: Any = None) -> Any:
        """Copy host values (NumPy arrays, lists, scalars) onto this backend's device."""
        return self.xp.asarray(values, dtype=dtype, device=self.device)

    def contiguous(self, values: Any) -> Any:
        """``values`` in row-major order (a copy when they are not): the fast paths read dense arrays. Other
        namespaces run only the generic path, which assumes no layout."""
        make = getattr(self.xp, "ascontiguousarray", None) if self.name in ("numpy", "cupy") else None
        return values if make is None else make(values)

    def dtype(self, dtype: Any) -> Any:
        """A dtype of this namespace from a name ("float32") or a dtype object."""
        if isinstance(dtype, str):
            try:
                return getattr(self.xp, dtype)
            except AttributeError:
                raise ValueError(f"unknown dtype {dtype!r} for backend {self.name!r}") from None
        return dtype


BFLOAT16_SPLIT = 2.0 ** 16 + 1  # Veltkamp's splitter for float32's 24-bit significand at bfloat16's 8 bits


def round_to_bfloat16(values: Any) -> Any:
    """float32 ``values`` rounded to the nearest bfloat16 (ties to even), still float32: Veltkamp's splitting,
    plain arithmetic that runs on every namespace and device (the Array API has no bit casts). The high part of
    the split is the value rounded to 8 significant bits, exactly as round-to-nearest-even for every normal
    float32 of magnitude below 2**112 (the product with the splitter must not overflow; float32's subnormals,
    below 1.2e-38, are not rounded as bfloat16's are); the exponent range is float32's, which bfloat16 shares."""
    scaled = values * BFLOAT16_SPLIT
    return scaled - (scaled - values)


FLOAT16_SPLIT = 2.0 ** 13 + 1  # Veltkamp's splitter for float32's 24-bit significand at half precision's 11 bits
FLOAT16_SMALLEST_NORMAL = 2.0 ** -14  # below it half precision has fixed steps of 2**-24 (its subnormals)
FLOAT16_STEP_SHIFT = 0.75  # a float32 near 0.75 has steps of 2**-24: (x + 0.75) - 0.75 rounds x to that step
FLOAT16_OVERFLOW = 2.0 ** 16  # what rounds to 2**16 or more is past half precision's largest, 65504: infinite


def round_to_float16(xp: Any, values: Any) -> Any:
    """float32 ``values`` rounded to the nearest IEEE half-precision value (ties to even), still float32: 11
    significant bits by Veltkamp's splitting; below 2**-14 the subnormals' fixed steps of 2**-24; infinity from
    65520 on (the midpoint past 65504, which rounds to the even 2**16). Plain arithmetic, any namespace."""
    scaled = values * FLOAT16_SPLIT
    rounded = scaled - (scaled - values)
    rounded = xp.where(xp.abs(values) < FLOAT16_SMALLEST_NORMAL,
                       (values + FLOAT16_STEP_SHIFT) - FLOAT16_STEP_SHIFT, rounded)
    infinite = xp.full_like(values, xp.inf)
    return xp.where(xp.abs(rounded) >= FLOAT16_OVERFLOW, xp.where(values < 0, -infinite, infinite), rounded)


def _cupy_namespace() -> Any:
    try:
        import cupy
    except ImportError as error:
        raise BackendError(
            "backend='cupy' needs CuPy, which is not installed: pip install 'lstmx[cuda12]' "
            "(or 'lstmx[cuda13]') on a machine with an NVIDIA GPU"
        ) from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError, or a driver that cannot load
        raise BackendError(f"backend='cupy': CuPy is installed but no CUDA device is usable ({error})") from error
    if count == 0:
        raise BackendError("backend='cupy': CuPy is installed but this machine has no CUDA device")
    import array_api_compat.cupy as xp

    return xp


def _namespace_by_name(name: str) -> Any:
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp
    if name == "cupy":
        return _cupy_namespace()
    if name == "array_api_strict":
        try:
            import array_api_strict as xp
        except ImportError as error:
            raise BackendError("backend='array_api_strict' needs: pip install array-api-strict") from error
        return xp
    if name == "torch":
        try:
            import array_api_compat.torch as xp
        except ImportError as error:
            raise BackendError("backend='torch' needs PyTorch: pip install torch (lstmx itself never needs it)") from error
        return xp
    raise BackendError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")


def _name_of_namespace(xp: Any) -> str:
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_array_api_strict_namespace(xp):
        return "array_api_strict"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    return getattr(xp, "__name__", type(xp).__name__)


def _default_device(xp: Any) -> Any:
    if array_api_compat.is_torch_namespace(xp):  # the device tensors are made on unless told otherwise
        import torch

        return torch.get_default_device()
    return xp.__array_namespace_info__().default_device()


def get_backend(backend: Any = "numpy") -> Backend:
    """Resolve ``backend`` (a name, an Array API namespace, an array, or a Backend) to a :class:`Backend`."""
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        xp = _namespace_by_name(backend)
        return Backend(xp, _default_device(xp), backend)
    if array_api_compat.is_array_api_obj(backend):
        return backend_of(backend)
    if hasattr(backend, "__array_namespace_info__") or hasattr(backend, "asarray"):
        name = _name_of_namespace(backend)
        xp = _namespace_by_name(name) if name in BACKEND_NAMES else backend
        return Backend(xp, _default_device(xp), name)
    raise BackendError(f"backend must be a name ({', '.join(BACKEND_NAMES)}), a namespace or an array, not {backend!r}")


def backend_of(*arrays: Any) -> Backend:
    """The one backend all ``arrays`` (None entries skipped) live on; refuses a mix of namespaces or devices."""
    present = [a for a in arrays if a is not None]
    if not present:
        raise ValueError("backend_of() needs at least one array")
    first = present[0]
    xp = array_api_compat.array_namespace(first)
    device = array_api_compat.device(first)
    for other in present[1:]:
        other_xp = array_api_compat.array_namespace(other)
        if _name_of_namespace(other_xp) != _name_of_namespace(xp):
            raise MixedBackendError(
                f"arrays from two backends in one call: {_name_of_namespace(xp)} and {_name_of_namespace(other_xp)}; "
                "move them to one backend first (model.to(...) or backend.asarray(...))"
            )
        if array_api_compat.device(other) != device:
            raise MixedBackendError(f"arrays on two devices in one call: {device} and {array_api_compat.device(other)}")
    return Backend(xp, device, _name_of_namespace(xp))


def check_same_backend(backend: Backend, name: str, array: Any) -> None:
    """Raise a clear error when ``array`` does not live on ``backend`` (namespace and device)."""
    if not array_api_compat.is_array_api_obj(array):
        raise TypeError(f"{name} must be an array of backend {backend.name!r}, not {type(array).__name__}")
    found = backend_of(array)
    if found.name != backend.name:
        raise MixedBackendError(
            f"{name} is a {found.name} array but the model lives on {backend.name}; "
            f"move it with model.backend.asarray(...) or move the model with model.to({found.name!r})"
        )
    if found.device != backend.device:
        raise MixedBackendError(f"{name} is on device {found.device} but the model is on device {backend.device}")


def to_numpy(array: Any) -> np.ndarray:
    """A host NumPy copy of any backend's array (a device-to-host copy for CuPy)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return np.asarray(array)
    if array_api_compat.is_cupy_array(array):
        return array.get()
    if array_api_compat.is_torch_array(array):
        return array.detach().cpu().numpy()
    if array_api_compat.is_array_api_obj(array):
        return np.from_dlpack(array)
    return np.asarray(array)


def dtype_name(dtype: Any) -> str:
    """A dtype's short name ("float32") whatever namespace it comes from."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]


def is_cupy(backend: Backend) -> bool:
    return backend.name == "cupy"


def is_host(backend: Backend) -> bool:
    """Arrays in host memory: reading one back costs no device synchronisation."""
    return backend.name in ("numpy", "array_api_strict")
