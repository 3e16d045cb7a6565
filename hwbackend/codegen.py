"""The BYOC codegen `relax.ext.quweit` (pure Python, registered on import).

For every offloaded function it returns a C source runtime module exporting the function's global
symbol (survives `export_library`/`load_module`). Given the option `verilog_dir`, it also writes the
blocks' Verilog there (one file per block, shared LUT primitive, top module) and `blocks.json`,
which names each block's module, symbol and parameter fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import tvm_ffi
from quweit.custom_ops import WeightlessBlockParams

from .c_source import render_c_block
from .lowering import params_from_arguments
from .rtl import RtlBlock, verilog_name
from .rtl_files import write_rtl

CODEGEN_NAME = "quweit"
MANIFEST = "blocks.json"
#: The exception the codegen last raised: TVM's FFI hands it to the caller as a RuntimeError with the
#: type lost, so the caller takes the original from here (`raised_in_codegen`).
_RAISED: list[BaseException] = []


def raised_in_codegen() -> BaseException | None:
    """The exception behind a failed RunCodegen, if the codegen raised it (taken: asked once)."""
    return _RAISED.pop() if _RAISED else None


def fingerprint(params: WeightlessBlockParams) -> str:
    """A digest of a block's structure and every parameter bit: matches codegen blocks to ONNX nodes."""
    digest = hashlib.sha256(json.dumps(params.attributes(), sort_keys=True).encode())
    for value in params.arrays().values():
        digest.update(value.dtype.str.encode() + str(value.shape).encode() + value.tobytes())
    return digest.hexdigest()


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


def module_name(symbol: str) -> str:
    """Verilog module of an offloaded function: `fused_quweit_weightless_block3_quweit` -> `quweit_weightless_block3`."""
    core = symbol.removeprefix("fused_").removesuffix("_" + CODEGEN_NAME)
    return verilog_name(core)


def _option(options, key: str, default=None):
    if options is None or key not in options:
        return default
    return options[key]


@tvm_ffi.register_global_func("relax.ext." + CODEGEN_NAME)
def quweit_codegen(functions, options, constant_names):
    """TVM's entry point: one runtime module per offloaded function (inputs first, then the output)."""
    _RAISED.clear()
    try:
        return _codegen(functions, options, constant_names)
    except BaseException as err:
        _RAISED.append(err)
        raise


def _codegen(functions, options, constant_names):
    import tvm

    del constant_names  # the block's constants are compiled into the C source
    create = tvm.get_global_func("runtime.CSourceModuleCreate")
    modules, blocks, manifest = [], [], []
    pipeline = bool(_option(options, "pipeline", False))
    for function in functions:
        symbol = str(function.attrs["global_symbol"])
        params = block_of_function(function)
        modules.append(create(render_c_block(symbol, params), "c", [symbol], []))
        block = RtlBlock(module_name(symbol), params, pipeline)
        blocks.append(block)
        manifest.append({"symbol": symbol, "module": block.name, "latency": block.latency,
                         "fingerprint": fingerprint(params)})
    verilog_dir = _option(options, "verilog_dir")
    if verilog_dir is not None and blocks:
        outdir = Path(str(verilog_dir))
        write_rtl(blocks, outdir, top=str(_option(options, "top", "quweit_top")))
        (outdir / MANIFEST).write_text(json.dumps({"pipeline": pipeline, "blocks": manifest}, indent=2) + "\n")
    return modules
