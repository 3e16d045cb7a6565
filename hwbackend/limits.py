"""What the hardware backend supports beyond the op contract's own limits, checked before any output."""

from __future__ import annotations

from quweit.custom_ops import WeightlessBlockParams

from .errors import HwBackendError

#: Widest q input / acc output bus of one block module (bits): testbench words and simulator limits.
MAX_BUS_BITS = 1 << 16
#: Most LUTs (all layers) in one block module: keeps generated RTL and simulation within reason.
MAX_LUTS = 1 << 18


def check_rtl_supported(params: WeightlessBlockParams, node: str) -> None:
    """Raise HwBackendError naming the block, the quantity and its value when RTL cannot be emitted."""
    checks = (
        ("q input bus (in_features * input_bits)", params.in_features * params.input_bits, MAX_BUS_BITS),
        ("acc output bus (out_features * 32)", params.out_features * 32, MAX_BUS_BITS),
        ("LUT count (sum of layer_sizes)", sum(params.layer_sizes), MAX_LUTS),
    )
    for what, value, limit in checks:
        if value > limit:
            raise HwBackendError(
                f"block '{node}': {what} is {value}, beyond the Verilog backend's limit of {limit}"
            )
