"""The torch shim of `WeightlessBlock`: a trainable module whose eval forward is the op, bit for bit.

Training mode: a thermometer with a straight-through surrogate gradient to `x`, LUT layers with EFD
gradients (`efd`), a learnable mapping over candidate subsets (`learnable_mapping`), and a conditional
summation whose encoded values and biases are learnt in output units and rounded to integers in every
forward (quantization-aware, straight-through), so `to_params()` exports exactly what was trained.
Training runs on the fused native ops (`fused_training`, two calls per step) when the library is built,
otherwise stage by stage in torch; both compute the same outputs bit for bit.
Eval mode runs the integer semantics of docs/weightless_block.md section 3 with torch ops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import fused_training
from .efd import lut_layer
from .errors import WeightlessBlockError
from .learnable_mapping import chosen_indices, select_bits
from .params import WeightlessBlockParams, pack_tables

#: Encoded values are trained as floats: exact integers only up to 2^22 (with margin for the
#: round trip through output units).
MAX_EXACT_VALUE = 1 << 22


def quantize_torch(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Spec 3.1 in torch: one float32 multiplication, round half to even, saturate, NaN -> 0."""
    q = torch.clamp(torch.round(x * scale), qmin, qmax)
    return torch.nan_to_num(q, nan=0.0)


class Thermometer(torch.autograd.Function):
    """float32 `[B, D]` -> 0/1 bits `[B, D*T]`; gradient: a triangle of width `width_i` around each threshold."""

    @staticmethod
    def forward(ctx, x, scale, thresholds, width, qmin, qmax):
        p = x * scale
        q = quantize_torch(x, scale, qmin, qmax)
        bits = (q[:, :, None] > thresholds[None]).to(x.dtype)
        ctx.save_for_backward(p, scale, thresholds, width)
        return bits.reshape(x.shape[0], x.shape[1] * thresholds.shape[1])

    @staticmethod
    def backward(ctx, grad):
        p, scale, thresholds, width = ctx.saved_tensors
        distance = torch.nan_to_num(p, nan=0.0)[:, :, None] - (thresholds[None] + 0.5)
        slope = torch.clamp(1.0 - distance.abs() / width[None, :, None], min=0.0) / width[None, :, None]
        slope = torch.where(torch.isnan(p)[:, :, None], 0.0, slope)
        g = grad.reshape(slope.shape)
        return (g * slope).sum(-1) * scale, None, None, None, None, None


class WeightlessBlock(nn.Module):
    """A `WeightlessBlock` with trainable tables, mapping, encoded values and biases.

    Fixed: input scales and thresholds (fitted from data before), output scales (the integer step of
    each output). Build it with `from_params`; read it back with `to_params`.
    """

    def __init__(self, params: WeightlessBlockParams, *, candidates: int = 1, table_magnitude: float = 0.5,
                 tau: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if not 0 < table_magnitude <= 1:
            raise ValueError(f"table_magnitude must be in (0, 1], got {table_magnitude}")
        self.lut_inputs = params.lut_inputs
        self.layer_sizes = params.layer_sizes
        self.input_bits = params.input_bits
        self.qmin, self.qmax = params.qmin, params.qmax
        self.node = params.node
        self.tau = tau
        self.register_buffer("input_scale", torch.from_numpy(params.input_scale.copy()))
        thr = params.thresholds.astype(np.float32)  # exact: |thr| <= 2^15
        self.register_buffer("thresholds", torch.from_numpy(thr))
        self.register_buffer("surrogate_width", torch.from_numpy(_surrogate_width(params)))

        generator = torch.Generator().manual_seed(seed)
        bits = params.table_bits().astype(np.float32)
        self.tables = nn.ParameterList()
        self.mapping_weights = nn.ParameterList()
        for k in range(params.num_layers):
            rows = params.layer_rows(k)
            self.tables.append(nn.Parameter(torch.from_numpy((bits[rows] * 2 - 1) * table_magnitude)))
            current = torch.from_numpy(params.mapping[rows].astype(np.int64)).reshape(-1, 1)
            if candidates > 1:
                others = torch.randint(params.layer_input_size(k), (current.shape[0], candidates - 1),
                                       generator=generator)
                weights = torch.zeros(current.shape[0], candidates)
                weights[:, 0] = 1.0  # the exported mapping stays the choice until training moves it
                self.mapping_weights.append(nn.Parameter(weights))
                current = torch.cat([current, others], dim=1)
            self.register_buffer(f"candidates_{k}", current)

        out_scale = params.output_scale.astype(np.float32)
        unit = np.abs(out_scale)
        unit = np.where((unit >= np.finfo(np.float32).tiny) & (unit <= 2.0**100), unit, 1.0).astype(np.float32)
        group = params.group_size
        for name, ints, units in (("encoded_values", params.encoded_values, np.repeat(unit, group)),
                                  ("bias", params.bias, unit)):
            if np.abs(ints.astype(np.int64)).max(initial=0) > MAX_EXACT_VALUE:
                raise WeightlessBlockError(
                    name, f"magnitude {np.abs(ints).max()} exceeds {MAX_EXACT_VALUE}: not trainable exactly in float32",
                    node=params.node)
            real = ints.astype(np.float32) * units
            if not np.array_equal(np.rint(real / units), ints.astype(np.float32)):
                raise WeightlessBlockError(name, "does not survive the float32 round trip through output units",
                                           node=params.node)
            setattr(self, name, nn.Parameter(torch.from_numpy(real)))
        self.register_buffer("value_unit", torch.from_numpy(unit))
        self.register_buffer("output_scale", torch.from_numpy(out_scale))

    # ----- construction and export ------------------------------------------------------------------
    @classmethod
    def from_params(cls, params: WeightlessBlockParams, **options) -> WeightlessBlock:
        return cls(params, **options)

    @property
    def in_features(self) -> int:
        return self.thresholds.shape[0]

    @property
    def out_features(self) -> int:
        return self.output_scale.shape[0]

    @property
    def group_size(self) -> int:
        return self.layer_sizes[-1] // self.out_features

    def candidates(self, k: int) -> torch.Tensor:
        return getattr(self, f"candidates_{k}")

    def _weights(self, k: int):
        return self.mapping_weights[k] if len(self.mapping_weights) else None

    def mapping(self, k: int) -> torch.Tensor:
        """Layer `k`'s current mapping `[L_k, n]` (int64)."""
        return chosen_indices(self.candidates(k), self._weights(k)).reshape(-1, self.lut_inputs)

    def integer_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(encoded_values, bias)` as the exported integers (int64)."""
        unit_v = self.value_unit.repeat_interleave(self.group_size)
        return (torch.round(self.encoded_values.detach() / unit_v).to(torch.int64),
                torch.round(self.bias.detach() / self.value_unit).to(torch.int64))

    def to_params(self, node: str | None = None) -> WeightlessBlockParams:
        """The op's parameters of the current state (validated)."""
        values, bias = self.integer_values()
        return WeightlessBlockParams(
            lut_inputs=self.lut_inputs,
            layer_sizes=self.layer_sizes,
            input_bits=self.input_bits,
            input_scale=self.input_scale.numpy().copy(),
            thresholds=self.thresholds.numpy().astype(np.int32),
            mapping=torch.cat([self.mapping(k) for k in range(len(self.layer_sizes))]).numpy().astype(np.int32),
            tables=pack_tables(torch.cat([(t.detach() > 0) for t in self.tables]).numpy().astype(np.uint8)),
            encoded_values=values.numpy().astype(np.int32),
            bias=bias.numpy().astype(np.int32),
            output_scale=self.output_scale.numpy().copy(),
            node=node or self.node,
        )

    @torch.no_grad()
    def clamp_tables_(self) -> None:
        """Keep table entries in [-1, 1] (call after each optimizer step, as DWN does)."""
        for table in self.tables:
            table.clamp_(-1.0, 1.0)

    # ----- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise WeightlessBlockError("X", f"must be float32, got {x.dtype}", node=self.node)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise WeightlessBlockError(
                "X", f"last axis must be in_features={self.in_features}, got shape {list(x.shape)}", node=self.node)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        y = self._train_forward(flat) if self.training else self._exact_forward(flat)
        return y.reshape(*lead, self.out_features)

    @property
    def uses_fused_training(self) -> bool:
        """Training mode runs the fused native ops (`fused_training`: built and not turned off)."""
        return fused_training.enabled()

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        unit_v = self.value_unit.repeat_interleave(self.group_size)
        values = _round_ste(self.encoded_values / unit_v)
        bias = _round_ste(self.bias / self.value_unit)
        if self.uses_fused_training:
            acc = fused_training.accumulators(self, x, values, bias)
        else:
            acc = self._staged_accumulators(x, values, bias)
        return acc * self.output_scale

    def _staged_accumulators(self, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The per-stage torch path: the fallback without the native library (and the fused ops' reference)."""
        bits = Thermometer.apply(x, self.input_scale, self.thresholds, self.surrogate_width, self.qmin, self.qmax)
        for k, table in enumerate(self.tables):
            slot_bits = select_bits(bits, self.candidates(k), self._weights(k), self.tau)
            bits = lut_layer(slot_bits.reshape(x.shape[0], table.shape[0], self.lut_inputs), table)
        grouped = bits.reshape(x.shape[0], self.out_features, self.group_size).double()
        # Integer-valued terms summed in float64 and rounded once, as the op's integer accumulator converts:
        # exact (float32 sums round once partial sums pass 2^24). The bits' gradient is still the float32
        # product grad * value (a float64 product of two float32 numbers rounds to the same float32).
        acc = (grouped * values.reshape(self.out_features, self.group_size).double()).sum(-1) + bias.double()
        return acc.float()

    @torch.no_grad()
    def _exact_forward(self, x: torch.Tensor) -> torch.Tensor:
        q = quantize_torch(x, self.input_scale, self.qmin, self.qmax)
        bits = (q[:, :, None] > self.thresholds[None]).reshape(x.shape[0], self.thresholds.numel())
        shifts = torch.arange(self.lut_inputs)
        for k, table in enumerate(self.tables):
            mapping = self.mapping(k)
            address = (bits[:, mapping].to(torch.int64) << shifts).sum(-1)
            flat = torch.arange(mapping.shape[0]) * table.shape[1] + address
            bits = (table.detach() > 0).reshape(-1)[flat]
        values, bias = self.integer_values()
        grouped = bits.reshape(x.shape[0], self.out_features, self.group_size)
        acc = torch.where(grouped, values.reshape(self.out_features, -1), 0).sum(-1) + bias
        return acc.to(torch.int32).to(torch.float32) * self.output_scale


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer in the forward pass, identity in the backward pass."""
    return v + (torch.round(v) - v).detach()


def _surrogate_width(params: WeightlessBlockParams) -> np.ndarray:
    """Per feature, the mean spacing of its thresholds (at least 1 quantization step)."""
    thr = params.thresholds.astype(np.float64)
    if thr.shape[1] > 1:
        spacing = (thr[:, -1] - thr[:, 0]) / (thr.shape[1] - 1)
    else:
        spacing = np.full(thr.shape[0], (params.qmax - params.qmin) / 4.0)
    return np.maximum(spacing, 1.0).astype(np.float32)
