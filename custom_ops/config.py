"""Block structure choices (how big a LUT block to build for an MLP), shared by the converter,
the fitting code, the kernel benchmarks and the hardware backend so they all mean the same block."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Structure of a fitted block; the parameters themselves come from fitting.

    `luts_per_output` is the group size G of the conditional summation; `hidden_layers` are the sizes
    of LUT layers before the last one (empty: one layer, the thermometer feeds the summed LUTs).
    `value_bits` bounds the encoded values and biases (signed bits; narrow values make narrow adders);
    `popcount` fits every group with one value (DWN's GroupSum: each LUT adds 0 or 1, the magnitude
    goes to `output_scale`), which the hardware sums with a popcount. Both are plain v1 parameters.
    """

    lut_inputs: int = 6
    thresholds_per_feature: int = 8
    luts_per_output: int = 8
    hidden_layers: tuple[int, ...] = ()
    input_bits: int = 8
    value_bits: int = 16
    popcount: bool = False

    def layer_sizes(self, out_features: int) -> tuple[int, ...]:
        return (*self.hidden_layers, out_features * self.luts_per_output)


def default_config(in_features: int, out_features: int) -> BlockConfig:
    """The converter's default for an MLP of these widths (hidden sizes 64 to 4096).

    One layer of LUT6 (one FPGA LUT each), 8 thermometer bits per feature and 8 LUTs per output:
    about 3 table look-ups and 3 additions per output instead of `2 * hidden` multiply-adds.
    """
    del in_features  # one setting serves 64..4096; kept in the signature for future tuning
    return BlockConfig()
