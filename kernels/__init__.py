"""Kernels for tree verification: Triton on CUDA, each with a PyTorch reference twin and a dispatcher."""
