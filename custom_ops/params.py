"""The validated parameter container of one `WeightlessBlock` (docs/weightless_block.md).

Every implementation (reference, decomposition, torch shim, kernel, hardware backend) reads its
parameters through this class, so the checks of the specification's section 5 live in one place and
run once, when a block is built or read from a model.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from .errors import WeightlessBlockError

DOMAIN = "quweit"
OP_TYPE = "WeightlessBlock"
OP_VERSION = 1

#: Parameter inputs, in the op's input order after `X`.
PARAM_NAMES = (
    "input_scale",
    "thresholds",
    "mapping",
    "tables",
    "encoded_values",
    "bias",
    "output_scale",
)
PARAM_DTYPES = {
    "input_scale": np.dtype(np.float32),
    "thresholds": np.dtype(np.int32),
    "mapping": np.dtype(np.int32),
    "tables": np.dtype(np.uint64),
    "encoded_values": np.dtype(np.int32),
    "bias": np.dtype(np.int32),
    "output_scale": np.dtype(np.float32),
}
#: Attribute limits of spec section 1 (inclusive).
LIMITS = {
    "in_features": (1, 65536),
    "out_features": (1, 65536),
    "thresholds_per_feature": (1, 255),
    "lut_inputs": (1, 8),
    "input_bits": (2, 16),
}
#: Attributes every node must carry (spec section 1, no defaults); the derived ones must agree with the
#: parameters' shapes.
DERIVED_ATTRIBUTES = ("in_features", "out_features", "thresholds_per_feature")
REQUIRED_ATTRIBUTES = ("lut_inputs", "layer_sizes", "input_bits", *DERIVED_ATTRIBUTES)
MAX_INPUT_SCALE = float(2**24)
ACC_LIMIT = 2**31 - 1


def input_range(input_bits: int) -> tuple[int, int]:
    """`(qmin, qmax)` of a signed `input_bits`-bit quantized input (spec section 1)."""
    return -(1 << (input_bits - 1)), (1 << (input_bits - 1)) - 1


def table_words(lut_inputs: int) -> int:
    """64-bit words per truth table: `ceil(2^n / 64)`."""
    return max(1, (1 << lut_inputs) // 64)


def pack_tables(bits: np.ndarray) -> np.ndarray:
    """Pack truth tables `[L, 2^n]` of 0/1 into INIT words `[L, W]` (bit a -> word a>>6, bit a&63)."""
    bits = np.asarray(bits)
    rows, entries = bits.shape
    padded = np.zeros((rows, max(entries, 64)), dtype=np.uint64)
    padded[:, :entries] = bits != 0
    words = padded.reshape(rows, -1, 64)
    shifts = np.arange(64, dtype=np.uint64)
    return np.bitwise_or.reduce(words << shifts, axis=2).astype(np.uint64)


def unpack_tables(tables: np.ndarray, lut_inputs: int) -> np.ndarray:
    """Inverse of `pack_tables`: INIT words `[L, W]` -> uint8 table bits `[L, 2^n]`."""
    shifts = np.arange(64, dtype=np.uint64)
    bits = (tables[:, :, None] >> shifts) & np.uint64(1)
    return bits.reshape(tables.shape[0], -1)[:, : 1 << lut_inputs].astype(np.uint8)


def _describe(value: np.ndarray) -> str:
    return f"{value.dtype}{list(value.shape)}"


@dataclasses.dataclass(frozen=True, eq=False)
class WeightlessBlockParams:
    """Structure (attributes) and parameters (initializers) of one block; validated on construction."""

    lut_inputs: int
    layer_sizes: tuple[int, ...]
    input_bits: int
    input_scale: np.ndarray
    thresholds: np.ndarray
    mapping: np.ndarray
    tables: np.ndarray
    encoded_values: np.ndarray
    bias: np.ndarray
    output_scale: np.ndarray
    node: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_sizes", tuple(self.layer_sizes) if _is_sequence(self.layer_sizes) else self.layer_sizes)
        try:
            self._validate()
        except WeightlessBlockError as err:
            raise err.with_node(self.node) if self.node else err

    # ----- derived structure -------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.bias.shape[0])

    @property
    def thresholds_per_feature(self) -> int:
        return int(self.thresholds.shape[1])

    @property
    def num_layers(self) -> int:
        return len(self.layer_sizes)

    @property
    def group_size(self) -> int:
        return self.layer_sizes[-1] // self.out_features

    @property
    def words_per_table(self) -> int:
        return table_words(self.lut_inputs)

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """First global row of each layer in `mapping`/`tables`."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.layer_sizes)[:-1]]))

    @property
    def qmin(self) -> int:
        return input_range(self.input_bits)[0]

    @property
    def qmax(self) -> int:
        return input_range(self.input_bits)[1]

    def layer_rows(self, k: int) -> slice:
        start = self.layer_offsets[k]
        return slice(start, start + self.layer_sizes[k])

    def layer_input_size(self, k: int) -> int:
        return self.in_features * self.thresholds_per_feature if k == 0 else self.layer_sizes[k - 1]

    def table_bits(self) -> np.ndarray:
        """All truth tables unpacked, `[L, 2^n]` uint8."""
        return unpack_tables(self.tables, self.lut_inputs)

    def attributes(self) -> dict[str, object]:
        """The op's attributes (spec section 1), in a stable order."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "thresholds_per_feature": self.thresholds_per_feature,
            "lut_inputs": self.lut_inputs,
            "layer_sizes": list(self.layer_sizes),
            "input_bits": self.input_bits,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameter inputs (spec section 2), in input order."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def replace(self, **changes: object) -> "WeightlessBlockParams":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def equals(self, other: "WeightlessBlockParams") -> bool:
        """Structure and every parameter identical (bit for bit)."""
        return self.attributes() == other.attributes() and all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in zip(self.arrays().values(), other.arrays().values())
        )

    # ----- validation (spec section 5) ------------------------------------------------------------
    def _validate(self) -> None:
        n = _check_int_attr("lut_inputs", self.lut_inputs)
        bits = _check_int_attr("input_bits", self.input_bits)
        sizes = self.layer_sizes
        if not isinstance(sizes, tuple) or not sizes:
            raise WeightlessBlockError("layer_sizes", f"must be a non-empty list of ints, got {sizes!r}")
        for k, size in enumerate(sizes):
            if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 1:
                raise WeightlessBlockError("layer_sizes", f"entry {k} must be an int >= 1, got {size!r}")
        object.__setattr__(self, "layer_sizes", tuple(int(s) for s in sizes))

        for name in PARAM_NAMES:
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                raise WeightlessBlockError(name, f"must be a numpy array, got {type(value).__name__}")
            if value.dtype != PARAM_DTYPES[name]:
                raise WeightlessBlockError(
                    name, f"dtype must be {PARAM_DTYPES[name]}, got {_describe(value)}"
                )
        self._check_shapes(n)

        scale = self.input_scale
        bad = ~(np.isfinite(scale) & (scale > 0) & (scale <= MAX_INPUT_SCALE))
        if bad.any():
            i = int(np.argmax(bad))
            raise WeightlessBlockError(
                "input_scale", f"entry {i} is {scale[i]!r}; must be finite with 0 < s <= 2^24"
            )
        qmin, qmax = input_range(bits)
        thr = self.thresholds
        outside = (thr < qmin) | (thr > qmax)
        if outside.any():
            i, t = (int(v) for v in np.argwhere(outside)[0])
            raise WeightlessBlockError(
                "thresholds",
                f"entry [{i}, {t}] = {thr[i, t]} is outside [{qmin}, {qmax}] (input_bits={bits})",
            )
        unsorted = np.diff(thr.astype(np.int64), axis=1) < 0
        if unsorted.any():
            i, t = (int(v) for v in np.argwhere(unsorted)[0])
            raise WeightlessBlockError(
                "thresholds",
                f"row {i} is not non-decreasing: entry {t} = {thr[i, t]} > entry {t + 1} = {thr[i, t + 1]}",
            )
        for k in range(len(self.layer_sizes)):
            rows = self.mapping[self.layer_rows(k)]
            limit = self.layer_input_size(k)
            invalid = (rows < 0) | (rows >= limit)
            if invalid.any():
                j, slot = (int(v) for v in np.argwhere(invalid)[0])
                raise WeightlessBlockError(
                    "mapping",
                    f"layer {k} LUT {j} slot {slot} reads bit {rows[j, slot]}, outside [0, {limit})",
                )
        if n < 6:
            high = self.tables[:, 0] >> np.uint64(1 << n)
            if high.any():
                r = int(np.argmax(high != 0))
                raise WeightlessBlockError(
                    "tables",
                    f"row {r} = {int(self.tables[r, 0]):#x} has bits set above bit {(1 << n) - 1} (lut_inputs={n})",
                )
        span = np.abs(self.bias.astype(np.int64)) + np.abs(
            self.encoded_values.astype(np.int64).reshape(self.out_features, -1)
        ).sum(axis=1)
        if (span > ACC_LIMIT).any():
            o = int(np.argmax(span > ACC_LIMIT))
            raise WeightlessBlockError(
                "encoded_values",
                f"output {o}: |bias| + sum |encoded_values| = {int(span[o])} exceeds 2^31 - 1",
            )
        if not np.isfinite(self.output_scale).all():
            o = int(np.argmax(~np.isfinite(self.output_scale)))
            raise WeightlessBlockError("output_scale", f"entry {o} is {self.output_scale[o]!r}; must be finite")

    def _check_shapes(self, n: int) -> None:
        total = sum(self.layer_sizes)
        last = self.layer_sizes[-1]
        expect_ndim = {"input_scale": 1, "thresholds": 2, "mapping": 2, "tables": 2,
                       "encoded_values": 1, "bias": 1, "output_scale": 1}
        for name, ndim in expect_ndim.items():
            value = getattr(self, name)
            if value.ndim != ndim:
                raise WeightlessBlockError(name, f"must have rank {ndim}, got shape {list(value.shape)}")
        d_in = _check_int_attr("in_features", self.thresholds.shape[0])
        d_out = _check_int_attr("out_features", self.bias.shape[0])
        _check_int_attr("thresholds_per_feature", self.thresholds.shape[1])
        expected = {
            "input_scale": (d_in,),
            "mapping": (total, n),
            "tables": (total, table_words(n)),
            "encoded_values": (last,),
            "output_scale": (d_out,),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value.shape != shape:
                raise WeightlessBlockError(
                    name, f"shape must be {list(shape)}, got {list(value.shape)}"
                )
        if last % d_out:
            raise WeightlessBlockError(
                "layer_sizes",
                f"last layer size {last} is not a multiple of out_features {d_out} (group sizes must divide)",
            )

    # ----- ONNX hand-off ------------------------------------------------------------------------
    def initializer_names(self, prefix: str) -> list[str]:
        return [f"{prefix}{name}" for name in PARAM_NAMES]

    def to_onnx(self, prefix: str) -> tuple[dict[str, object], list]:
        """`(attributes, initializers)` for a node whose parameter inputs are named `prefix + name`."""
        from onnx import numpy_helper

        inits = [numpy_helper.from_array(value, f"{prefix}{name}") for name, value in self.arrays().items()]
        return self.attributes(), inits

    @classmethod
    def from_onnx(
        cls, node, initializers: Mapping[str, object], *, node_name: str | None = None
    ) -> "WeightlessBlockParams":
        """Read a block from an ONNX `NodeProto` and its initializers (TensorProto or numpy by name)."""
        from onnx import helper, numpy_helper

        name = node_name or node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"
        attrs = {}
        for attribute in node.attribute:
            try:
                attrs[attribute.name] = helper.get_attribute_value(attribute)
            except (ValueError, TypeError) as err:  # an attribute of undefined or unknown type
                raise WeightlessBlockError(attribute.name, f"unreadable attribute ({err})", node=name) from None
        if len(node.input) != 1 + len(PARAM_NAMES):
            raise WeightlessBlockError(
                "inputs", f"expected {1 + len(PARAM_NAMES)} inputs, got {len(node.input)}", node=name
            )
        arrays: dict[str, np.ndarray] = {}
        for param, input_name in zip(PARAM_NAMES, node.input[1:]):
            if input_name not in initializers:
                raise WeightlessBlockError(
                    param, f"input '{input_name}' is not an initializer (parameters must be constant)", node=name
                )
            value = initializers[input_name]
            if not isinstance(value, np.ndarray):
                try:
                    value = numpy_helper.to_array(value)
                except (ValueError, TypeError, OSError) as err:  # data shorter than its dims, unloaded external data
                    raise WeightlessBlockError(param, f"initializer '{input_name}' is unreadable: {err}",
                                               node=name) from None
            arrays[param] = value
        return cls.from_attributes(attrs, arrays, node=name)

    @classmethod
    def from_attributes(
        cls, attrs: Mapping[str, object], arrays: Mapping[str, np.ndarray], *, node: str | None = None
    ) -> "WeightlessBlockParams":
        """A block from its attribute values and parameter arrays (what every importer reads from a node).

        Every attribute is required (spec section 1; no defaults); the derived ones (`in_features`,
        `out_features`, `thresholds_per_feature`) must agree with the parameters' shapes.
        """
        for required in REQUIRED_ATTRIBUTES:
            if attrs.get(required) is None:
                raise WeightlessBlockError(required, "attribute is missing", node=node)
        layer_sizes = attrs["layer_sizes"]
        params = cls(
            lut_inputs=attrs["lut_inputs"],
            layer_sizes=tuple(layer_sizes) if isinstance(layer_sizes, (list, tuple)) else layer_sizes,
            input_bits=attrs["input_bits"],
            node=node,
            **arrays,
        )
        for attr in DERIVED_ATTRIBUTES:
            if attrs[attr] != getattr(params, attr):
                raise WeightlessBlockError(
                    attr, f"attribute is {attrs[attr]} but the parameters give {getattr(params, attr)}", node=node
                )
        return params


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _check_int_attr(name: str, value: object) -> int:
    low, high = LIMITS[name]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise WeightlessBlockError(name, f"must be an int, got {value!r}")
    if not low <= value <= high:
        raise WeightlessBlockError(name, f"value {value} is outside [{low}, {high}]")
    return int(value)


def random_params(
    rng: np.random.Generator,
    *,
    in_features: int,
    out_features: int,
    thresholds_per_feature: int,
    lut_inputs: int,
    layer_sizes: Sequence[int] | None = None,
    group_size: int = 1,
    input_bits: int = 8,
    value_bits: int = 8,
) -> WeightlessBlockParams:
    """A random valid block: the generator behind every property-based test of an implementation.

    Without `layer_sizes` the block has one layer of `out_features * group_size` LUTs. Scales mix
    powers of two with arbitrary floats so rounding paths are exercised.
    """
    if layer_sizes is None:
        layer_sizes = (out_features * group_size,)
    layer_sizes = tuple(int(s) for s in layer_sizes)
    qmin, qmax = input_range(input_bits)
    thresholds = np.sort(
        rng.integers(qmin, qmax + 1, size=(in_features, thresholds_per_feature)), axis=1
    ).astype(np.int32)
    mapping_rows = []
    prev = in_features * thresholds_per_feature
    for size in layer_sizes:
        mapping_rows.append(rng.integers(0, prev, size=(size, lut_inputs)))
        prev = size
    mapping = np.concatenate(mapping_rows).astype(np.int32)
    tables = pack_tables(rng.integers(0, 2, size=(sum(layer_sizes), 1 << lut_inputs)))
    vmax = (1 << (value_bits - 1)) - 1
    encoded_values = rng.integers(-vmax, vmax + 1, size=layer_sizes[-1]).astype(np.int32)
    bias = rng.integers(-vmax, vmax + 1, size=out_features).astype(np.int32)
    input_scale = (2.0 ** rng.integers(-2, 8, size=in_features) * rng.choice([1.0, 1.37], size=in_features))
    output_scale = rng.uniform(-1.0, 1.0, size=out_features) * 2.0 ** rng.integers(-8, 2, size=out_features)
    return WeightlessBlockParams(
        lut_inputs=lut_inputs,
        layer_sizes=layer_sizes,
        input_bits=input_bits,
        input_scale=input_scale.astype(np.float32),
        thresholds=thresholds,
        mapping=mapping,
        tables=tables,
        encoded_values=encoded_values,
        bias=bias,
        output_scale=output_scale.astype(np.float32),
    )
