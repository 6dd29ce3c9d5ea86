"""Attention dropout's keep mask in Triton: the hash of graphattn/dropout.py
(same bits as the PyTorch and C++ versions), for kernels that regenerate the
mask of (edge_index column, head) in the forward and again in the backward."""
import triton
import triton.language as tl


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def dropout_keep(seed0, seed1, threshold, edge, head):
    """Bool tensor broadcast from `edge` and `head` (integer tensors): True = kept.
    seed0, seed1, threshold: uint32 scalars (see graphattn/dropout.py)."""
    x = _mix32(edge.to(tl.uint32) ^ seed0)
    x = _mix32(x ^ (head.to(tl.uint32) * 0x9E3779B9 + seed1))
    return (x >> 8) >= threshold
