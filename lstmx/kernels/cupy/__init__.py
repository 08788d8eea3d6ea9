"""CUDA fast paths on CuPy: the shell every path shares, one module per path, the CUDA sources."""
