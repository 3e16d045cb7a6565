"""Hardware backend: TVM Relax BYOC lowering of `quweit::WeightlessBlock` to C and Verilog (`quweit-compile`).

Importing this package imports neither TVM nor jinja2 (the `hw` extra); see hwbackend/README.md.
Entry points: `frontend.register_onnx_converter` / `frontend.from_onnx`, `patterns.partition_for_quweit`,
the codegen `relax.ext.quweit` (registered by importing `codegen`), `rtl` / `rtl_files` / `simulate` for the
Verilog, and `cli.main`.
"""
