"""tf2onnx handlers for TensorFlow ops that tf2onnx does not convert, passed as ``custom_op_handlers``.

``Erfc``: the exact GELU of Keras 3 and tf_keras (``gelu(x) = 0.5 x
erfc(-x / sqrt 2)``, used by ConvNeXt) has no tf2onnx handler. It becomes
ONNX ``Erf`` (opset 9 and later) and a subtraction from one::

    Before:  x -> Erfc -> y
    After:   x -> Erf -> Sub(1, .) -> y

``1 - erf(x)`` loses the relative precision of ``erfc`` only where the
result is below float32's epsilon (x above about 3.9), where GELU
multiplies it by a number of that size; the absolute error stays below 1e-7
times the input.
"""

from __future__ import annotations

import numpy as np

__all__ = ["convert_erfc", "CUSTOM_OP_HANDLERS"]


def convert_erfc(ctx, node, name, args) -> None:
    """tf2onnx handler (old-style ``(ctx, node, name, args)``): rewrite ``node`` (an Erfc) as 1 - Erf."""
    from onnx import helper
    from tf2onnx import utils

    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.output[0]))
    node.type = "Erf"
    node.domain = ""
    one = ctx.make_const(utils.make_name(f"{name}/one"), np.array(1, dtype=dtype))
    sub = ctx.insert_new_node_on_output(
        "Sub", node.output[0], name=utils.make_name(f"{name}/one_minus"), inputs=[one.output[0], node.output[0]]
    )
    ctx.copy_dtype(node.output[0], sub.output[0])
    ctx.copy_shape(node.output[0], sub.output[0])


CUSTOM_OP_HANDLERS = {"Erfc": (convert_erfc, [])}
