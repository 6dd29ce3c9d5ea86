// The op schemas of graphattn, and nothing else. One implementation per
// dispatch key lives in csrc/cpu/ (and csrc/cuda/ when built with CUDA).
#include <torch/library.h>

TORCH_LIBRARY(graphattn, m) {
  // Edge-softmax attention over a target-sorted CSR (see graphattn/graph.py).
  m.def("csr_attention_forward(Tensor q, Tensor k, Tensor v, Tensor rowptr, Tensor col, Tensor eid, "
        "Tensor? bias, float scale) -> (Tensor out, Tensor lse)");
  m.def("csr_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
        "Tensor? bias, Tensor out, Tensor lse, Tensor rowptr, Tensor col, Tensor eid, "
        "Tensor colptr, Tensor row_t, Tensor eid_t, float scale, bool need_dbias) "
        "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias)");
  // The same with the sparse-path extras (graphattn/scored_ops.py): score_kind 0 dot, 1 gat
  // (q, k [N, H, 1]), 2 gatv2 (with att [H, D]); attention dropout with the keep mask of
  // graphattn/dropout.py from seed [2]; alpha [E, H] by edge id when return_alpha (else empty).
  m.def("csr_scored_attention_forward(Tensor q, Tensor k, Tensor v, Tensor rowptr, Tensor col, Tensor eid, "
        "Tensor? bias, Tensor? att, Tensor? seed, int score_kind, float scale, float negative_slope, "
        "float dropout_p, bool return_alpha) -> (Tensor out, Tensor lse, Tensor alpha)");
  m.def("csr_scored_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor? grad_alpha, Tensor q, "
        "Tensor k, Tensor v, Tensor? bias, Tensor? att, Tensor? seed, Tensor out, Tensor lse, Tensor rowptr, "
        "Tensor col, Tensor eid, Tensor colptr, Tensor row_t, Tensor eid_t, int score_kind, float scale, "
        "float negative_slope, float dropout_p, bool need_dbias, bool need_datt) "
        "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias, Tensor grad_att)");
  // Complete attention within each segment ptr[s]:ptr[s+1] (a batch of complete graphs).
  m.def("segment_attention_forward(Tensor q, Tensor k, Tensor v, Tensor ptr, float scale) "
        "-> (Tensor out, Tensor lse)");
  m.def("segment_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
        "Tensor out, Tensor lse, Tensor ptr, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

// graphattn._C is imported as a Python module only to load the library above
// (and its kernels); it exposes nothing to Python itself.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
