"""The `quweit::WeightlessBlock` op: specification, parameters, oracle, ONNX schema and decomposition.

See docs/weightless_block.md. Importing this package registers the op's ONNX schema.
"""

from .config import BlockConfig, default_config
from .decomposition import MIN_OPSET, make_function
from .errors import WeightlessBlockError
from .model import attach_decomposition, block_nodes, make_block_model, make_block_node, read_blocks
from .params import (
    DOMAIN,
    OP_TYPE,
    OP_VERSION,
    PARAM_NAMES,
    WeightlessBlockParams,
    pack_tables,
    random_params,
    table_words,
    unpack_tables,
)
from .reference import evaluate, integer_core, quantize_inputs
from .schema import register_schema

register_schema()

__all__ = [
    "BlockConfig", "DOMAIN", "MIN_OPSET", "default_config", "OP_TYPE", "OP_VERSION", "PARAM_NAMES", "WeightlessBlockError",
    "WeightlessBlockParams", "attach_decomposition", "block_nodes", "evaluate", "integer_core",
    "make_block_model", "make_block_node", "make_function", "pack_tables", "quantize_inputs",
    "random_params", "read_blocks", "register_schema", "table_words", "unpack_tables",
]
