"""graphattn: fused edge-softmax attention over any edge list, dense or sparse.

    out = graphattn.attention(q, k, v, edge_index)

See shared/API.md for the contract and README.md for the measured figures.
"""
from .attention import attention
from .dispatch import BackendError, available_backends
from .graph import Graph
from . import ops  # noqa: F401  (registers the torch.library ops)
from . import nn  # noqa: E402  (GATConv, GATv2Conv, TransformerConv)

__version__ = "0.1.0"

__all__ = ["attention", "Graph", "available_backends", "BackendError", "__version__", "nn"]
