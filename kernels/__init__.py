"""Triton kernels of graphattn (installed as graphattn.kernels): one file per pattern."""
