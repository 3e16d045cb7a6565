"""The direct RTL path: each ONNX `WeightlessBlock` node -> one `RtlBlock`, keyed by its node name.

The hardware is built straight from the blocks read out of the ONNX model (no round trip through TVM),
once per block; the Verilog module name is derived from the node name and made unique.
"""

from __future__ import annotations

from quweit.custom_ops import WeightlessBlockParams

from .rtl import RtlBlock, verilog_name


def rtl_blocks(blocks: list[WeightlessBlockParams], *, pipeline: bool = False) -> dict[str, RtlBlock]:
    """`{node name: RtlBlock}` in graph order; unnamed nodes are called `block_<k>`."""
    designs: dict[str, RtlBlock] = {}
    taken: set[str] = set()
    for k, params in enumerate(blocks):
        node = params.node or f"block_{k}"
        if node in designs:
            node = f"{node}_{k}"
        module = verilog_name(node)
        while module in taken:
            module += f"_{k}"
        taken.add(module)
        designs[node] = RtlBlock(module, params, pipeline, node=node)
    return designs
