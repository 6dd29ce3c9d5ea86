"""Drop-in graph attention layers for PyG users, computed by graphattn.attention.

`GATConv`, `GATv2Conv` and `TransformerConv` take the constructor arguments of
`torch_geometric.nn`'s layers of the same name, hold parameters of the same
names and shapes (a PyG `state_dict` loads as is) and give the same outputs.
PyG is not needed (nor imported) to use them.

`edge_index` takes every adjacency form PyG's layers take, plus a prepared Graph:
- an integer tensor `[2, E]` (int64 or int32), sources in row 0, targets in row 1;
- a torch sparse `adj_t [N_dst, N_src]` (rows targets, columns sources): CSR, as
  `to_torch_csc_tensor(edge_index, size=(N_src, N_dst)).t()` gives (its CSR is used as it is,
  no sort), CSC or COO (indices[0] targets). PyG 2.8.1's own layers refuse CSC and an
  uncoalesced COO; these take them;
- a `torch_sparse.SparseTensor` adj_t (untested: torch_sparse has no build for this torch);
- a `graphattn.Graph` from `Graph.from_edge_index` (not a segments Graph).
`edge_attr` and the returned weights follow the input's own edge order (edge_index columns, the
Graph's source columns, the sparse values). Weights come back as PyG returns them for the form
(a Graph: `(edge_index [2, E] in its column order, loops appended, alpha)`). A layer with
`edge_dim` and no `edge_attr` takes multi-dimensional sparse values as edge features, as PyG.

Each pattern is prepared once (sort, checks, self-loops), not per call or per layer. A Graph
keeps it in its own cache. A tensor is looked up by identity (graphattn/nn/adjacency.py): the
same object, unchanged (`_version`, data pointer, shape, device) over the same (N_src, N_dst)
with the same loops reuses it; it is dropped when the tensor is freed; at most 8 entries;
thread-safe; not used under torch.compile. Reuse the edge_index tensor (or pass a Graph) across
layers and steps to get this.

`GraphMultiheadAttention` is GraphGPS's global attention (torch's
MultiheadAttention over each graph of a batch) without padding.
"""
from .conv import GATConv, GATv2Conv, TransformerConv
from .multihead import GraphMultiheadAttention

__all__ = ["GATConv", "GATv2Conv", "TransformerConv", "GraphMultiheadAttention"]
