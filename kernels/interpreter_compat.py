"""Compatibility shims for Triton's CPU interpreter (TRITON_INTERPRET=1), which
is how CPU-only machines and CI run the Triton kernels. Applied once, on import
of a kernel module, only when the interpreter is on; the GPU path never sees them.
"""
import os

import triton.language as tl

def _patch_interpreter():
    """Host-side compatibility shims for Triton's CPU interpreter (TRITON_INTERPRET=1 only).

    Neither changes the kernels nor runs on a GPU; both are idempotent.

    * The interpreter keeps every scalar as a 1-element numpy array and converts a
      loop bound with ``int(array)``; NumPy >= 2.3 refuses that for ndim > 0 arrays,
      so any ``for i in range(lo, hi)`` with a runtime bound fails. ``__index__`` is
      re-defined to take the single element.
    * The interpreter stores bfloat16 as raw uint16 bits and its ``tl.dot`` multiplies
      those integers (garbage for bf16 operands, triton 3.6). The dot is re-defined
      to widen bfloat16 operands to float32 first (exact), as the GPU's bf16 MMA does.
    * Its float32 -> bfloat16 cast truncates the mantissa (triton 3.6 passes no rounding
      mode), where the GPU rounds to nearest even: bfloat16 results came out several times
      less accurate than on a GPU (the fuzz test saw 8% error in dq). The cast is re-defined
      to round to nearest even, by torch's own conversion.
    """
    try:
        from triton.runtime import interpreter as _interp
    except Exception:  # pragma: no cover - interpreter layout changed
        return
    orig_patch = getattr(_interp, "_patch_lang_tensor", None)
    if orig_patch is not None and not getattr(orig_patch, "_graphattn_fix", False):

        def _patch_lang_tensor(tensor, scope):
            orig_patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        _patch_lang_tensor._graphattn_fix = True
        _interp._patch_lang_tensor = _patch_lang_tensor

    builder = getattr(_interp, "InterpreterBuilder", None)
    orig_dot = getattr(builder, "create_dot", None)
    convert = getattr(_interp, "_convert_float", None)
    if orig_dot is not None and convert is not None and not getattr(orig_dot, "_graphattn_fix", False):
        import numpy as np

        def _widen(h):
            if h.dtype.scalar == tl.bfloat16:
                data = convert(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
                return _interp.TensorHandle(data, tl.float32)
            return h

        def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
            return orig_dot(self, _widen(a), _widen(b), d, input_precision, max_num_imprecise_acc)

        create_dot._graphattn_fix = True
        builder.create_dot = create_dot

    orig_cast = getattr(builder, "cast_impl", None)
    if orig_cast is not None and not getattr(orig_cast, "_graphattn_fix", False):
        import numpy as np
        import torch

        def cast_impl(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                rounded = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).to(torch.bfloat16)
                return _interp.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
            return orig_cast(self, src, dst_type)

        cast_impl._graphattn_fix = True
        builder.cast_impl = cast_impl


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _patch_interpreter()
