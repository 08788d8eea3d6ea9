"""CPU fast paths: the NumPy buffer layer, the Numba kernels, their host buffer pool."""
