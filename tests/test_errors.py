"""Every malformed call of API.md's error list raises a clear ValueError / TypeError /
IndexError naming the argument, before any kernel reads memory."""
import pytest
import torch

import graphattn

from conftest import DEVICE, random_rows

N, H, D = 6, 2, 4


def qkv(dtype=torch.float32, n=N):
    return (random_rows(n, H, D, dtype, seed=s) for s in (1, 2, 3))


EDGES = torch.tensor([[0, 1, 2], [1, 2, 0]], device=DEVICE)


def call(**changes):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v, edge_index=EDGES)
    args.update(changes)
    return graphattn.attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("edge_index"), **args)


def ei(rows, dtype=torch.long):
    return torch.tensor(rows, dtype=dtype, device=DEVICE)


CASES = [
    # edge_index
    ("edge_index one row", dict(edge_index=ei([[0, 1, 2]])), ValueError, r"edge_index must be \[2, E\]"),
    ("edge_index 1-D", dict(edge_index=ei([0, 1])), ValueError, r"edge_index must be \[2, E\]"),
    ("edge_index 3 rows", dict(edge_index=ei([[0], [1], [2]])), ValueError, r"edge_index must be \[2, E\]"),
    ("edge_index float", dict(edge_index=ei([[0, 1], [1, 0]], torch.float32)), TypeError, "edge_index.*int64 or int32"),
    ("edge_index list", dict(edge_index=[[0, 1], [1, 0]]), TypeError, "edge_index must be None"),
    ("negative source", dict(edge_index=ei([[0, -1], [1, 0]])), IndexError, r"edge_index\[0\].*-1"),
    ("source >= N_src", dict(edge_index=ei([[0, N], [1, 0]])), IndexError, r"edge_index\[0\].*outside \[0, 6\)"),
    ("target >= N_dst", dict(edge_index=ei([[0, 1], [1, 99]])), IndexError, r"edge_index\[1\].*99"),
    ("negative target", dict(edge_index=ei([[0, 1], [-3, 0]])), IndexError, r"edge_index\[1\]"),
    # q, k, v
    ("q rank 2", dict(q=torch.zeros(N, D, device=DEVICE)), ValueError, r"q \[N_dst, H, D\].*ranks 2"),
    ("v rank 4", dict(v=torch.zeros(N, H, D, 1, device=DEVICE)), ValueError, "ranks 3, 3, 4"),
    ("heads differ", dict(k=torch.zeros(N, H + 1, D, device=DEVICE)), ValueError, "number of heads"),
    ("head dims differ", dict(k=torch.zeros(N, H, D + 1, device=DEVICE)), ValueError, "same head dim D"),
    ("k/v lengths differ", dict(v=torch.zeros(N + 1, H, D, device=DEVICE)), ValueError, "k and v must have the same"),
    ("dtypes differ", dict(k=torch.zeros(N, H, D, device=DEVICE, dtype=torch.float16)), TypeError, "share one dtype"),
    ("integer q", dict(q=torch.zeros(N, H, D, device=DEVICE, dtype=torch.long)), TypeError, "q must be float16"),
    ("q not a tensor", dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    ("zero head dim", dict(q=torch.zeros(N, H, 0, device=DEVICE), k=torch.zeros(N, H, 0, device=DEVICE)),
     ValueError, "head dims must be at least 1"),
    # bias
    ("bias wrong E", dict(bias=torch.zeros(4, H, device=DEVICE)), ValueError, r"bias must be \[E, H\] = \[3, 2\]"),
    ("bias wrong H", dict(bias=torch.zeros(3, H + 1, device=DEVICE)), ValueError, r"bias must be \[E, H\]"),
    ("bias rank 3", dict(bias=torch.zeros(3, H, 1, device=DEVICE)), ValueError, r"bias must be \[E, H\]"),
    ("bias dtype", dict(bias=torch.zeros(3, H, device=DEVICE, dtype=torch.float64)), TypeError, "bias must have the dtype"),
    ("bias not tensor", dict(bias=1.0), TypeError, "bias must be a torch.Tensor"),
    # path options
    ("causal on a graph", dict(causal=True), ValueError, "causal is taken on the dense path only"),
    ("unknown backend", dict(backend="fastest"), ValueError, "backend must be 'auto' or one of"),
    ("scale not a number", dict(scale="big"), TypeError, "scale must be a finite float"),
    ("scale nan", dict(scale=float("nan")), TypeError, "scale must be a finite float"),
]


@pytest.mark.parametrize("name, changes, error, words", CASES, ids=[c[0] for c in CASES])
def test_bad_sparse_call(name, changes, error, words):
    with pytest.raises(error, match=words):
        call(**changes)


def test_graph_of_other_sizes():
    graph = graphattn.Graph.from_edge_index(EDGES, num_nodes=N + 2)
    with pytest.raises(ValueError, match=r"num_nodes=\(N_src, N_dst\)"):
        call(edge_index=graph)


def test_bias_on_dense_and_segments():
    q, k, v = (t.unsqueeze(0) for t in qkv())
    with pytest.raises(ValueError, match="bias is taken on the sparse"):
        graphattn.attention(q, k, v, bias=torch.zeros(N, device=DEVICE))
    seg = graphattn.Graph.block_diagonal(torch.tensor([0, N], device=DEVICE))
    with pytest.raises(ValueError, match="bias is taken on the sparse"):
        graphattn.attention(*qkv(), seg, bias=torch.zeros(N * N, device=DEVICE))
    with pytest.raises(ValueError, match="causal is taken on the dense path only"):
        graphattn.attention(*qkv(), seg, causal=True)


def test_bad_dense_shapes():
    q = random_rows(N, H, D, torch.float32).unsqueeze(0)
    with pytest.raises(ValueError, match="same leading dims"):
        graphattn.attention(q, q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="of one rank >= 3"):
        graphattn.attention(q[0, 0], q[0, 0], q[0, 0])


def test_float64_off_cpu_and_devices_mismatch():
    if DEVICE == "cpu":
        pytest.skip("needs a second device")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        graphattn.attention(q, k.cpu(), v, EDGES)
    with pytest.raises(TypeError, match="float64 is supported on CPU only"):
        graphattn.attention(*qkv(torch.float64), EDGES)


def test_graph_on_another_device():
    if DEVICE == "cpu":
        pytest.skip("needs a second device")
    graph = graphattn.Graph.from_edge_index(EDGES.cpu(), num_nodes=N)
    with pytest.raises(ValueError, match=r"graph.to\(q.device\)"):
        call(edge_index=graph)


def test_forced_backend_that_cannot_serve_names_its_reason():
    with pytest.raises(graphattn.BackendError, match="sdpa.*serves the dense/segments pattern"):
        call(backend="sdpa")
    with pytest.raises(ValueError):  # BackendError is a ValueError
        call(backend="sdpa")


def test_corrupt_graph_is_caught_in_the_kernel_not_read_out_of_bounds():
    """A Graph whose CSR was tampered with must raise, not read wild memory."""
    if DEVICE != "cpu":
        pytest.skip("the CPU kernel's own bounds check")
    graph = graphattn.Graph.from_edge_index(EDGES, num_nodes=N)
    graph.col = graph.col.clone()
    graph.col[0] = 10 ** 9
    with pytest.raises(IndexError, match="outside"):
        call(edge_index=graph, backend="cpu")
