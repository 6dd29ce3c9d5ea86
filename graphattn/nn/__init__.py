"""Drop-in graph attention layers for PyG users, computed by graphattn.attention.

`GATConv`, `GATv2Conv` and `TransformerConv` take the constructor arguments of
`torch_geometric.nn`'s layers of the same name, hold parameters of the same
names and shapes (a PyG `state_dict` loads as is) and give the same outputs.
PyG is not needed (nor imported) to use them. `edge_index` is a `[2, E]`
integer tensor (PyG's SparseTensor / torch sparse adjacency are not taken).

`GraphMultiheadAttention` is GraphGPS's global attention (torch's
MultiheadAttention over each graph of a batch) without padding.
"""
from .conv import GATConv, GATv2Conv, TransformerConv
from .multihead import GraphMultiheadAttention

__all__ = ["GATConv", "GATv2Conv", "TransformerConv", "GraphMultiheadAttention"]
