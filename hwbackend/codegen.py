"""The BYOC codegen `relax.ext.quweit` (pure Python, registered on import).

A pure function: for every offloaded function it returns a C source runtime module exporting the
function's global symbol (survives `export_library`/`load_module`), and writes no files. The Verilog
does not go through TVM: `quweit-compile` builds it straight from the ONNX blocks (`design.py`).
"""

from __future__ import annotations

import tvm_ffi
from quweit.custom_ops import WeightlessBlockParams

from .c_source import render_c_block
from .lowering import params_from_arguments

CODEGEN_NAME = "quweit"


def block_of_function(function) -> WeightlessBlockParams:
    """The block inside an offloaded function: the constants of its composite's `call_tir`."""
    from tvm import relax
    from tvm.ir import Op

    found = []

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, Op) and expr.op.name == "relax.call_tir":
            found.append(expr)

    relax.analysis.post_order_visit(function, visit)
    if len(found) != 1:
        raise ValueError(f"quweit codegen: expected one block call in {function.attrs['global_symbol']}, found {len(found)}")
    arrays = [field.value.numpy() for field in list(found[0].args[1].fields)[1:]]
    return params_from_arguments(arrays, node=str(function.attrs["global_symbol"]))


@tvm_ffi.register_global_func("relax.ext." + CODEGEN_NAME)
def quweit_codegen(functions, options, constant_names):
    """TVM's entry point: one C runtime module per offloaded function (inputs first, then the output)."""
    import tvm

    del options, constant_names  # the block's constants are compiled into the C source
    create = tvm.get_global_func("runtime.CSourceModuleCreate")
    modules = []
    for function in functions:
        symbol = str(function.attrs["global_symbol"])
        modules.append(create(render_c_block(symbol, block_of_function(function)), "c", [symbol], []))
    return modules
