"""The model forms users bring, made the way users make them: a tiny random-weight transformer exported by a
torch exporter, then optimized by onnxruntime's transformer optimizer or quantized by onnxruntime's
quantizer (dynamic int8, static QDQ with a calibration reader), or exported in training mode.

Every parameter (biases and norm weights included) is drawn at random: with the libraries' default
initialisation all biases are zero and the exporters and optimizers share one initializer among them,
which would hide a bias read from the wrong place.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import torch
from models import EXPORT_SHAPE, FAMILIES, TOKEN_AXES, Family, _Positional, _seeded, _tokens, export
from quweit.onnxio import load_model

INPUT_SHAPE = (2, 5)


@dataclasses.dataclass(frozen=True)
class Form:
    """A model form: how to make it from a tiny export, and what the converter must find in it."""

    name: str
    family: str  # tests/models.py family (or "clip")
    exporter: str  # "legacy" or "dynamo"
    transform: Callable[[Path, Path, str], None]  # (exported, output, family) -> writes output
    activation: str  # activation the MLPs must be read as
    linear: str  # Linear kind the MLPs must be read as (rules/linear.py)
    quantized: bool = False  # the model was quantized before conversion
    down_bias: bool = True  # the MLP's down bias is the MLP's (False: none, or kept by a SkipLayerNorm after it)
    mlp_ops: tuple[str, ...] = ()  # op types that belong to MLPs only: none may remain after conversion


def _clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=64, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2,
                         pad_token_id=1)
    return _Positional(CLIPTextModel(cfg), ("input_ids", "attention_mask"))


FAMILIES_USED = {**FAMILIES, "clip": Family("clip", _seeded(_clip), _tokens, TOKEN_AXES, mlp_family="linear_act_linear")}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (norm weights around 1), so no two biases are equal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            param.copy_(1.0 + noise if "norm" in name.lower() and name.endswith("weight") else noise)
    return model


def export_random(family: str, exporter: str, path: Path, *, optimize: bool = False) -> Path:
    """`models.export` of `family` with every parameter random; `optimize` as torch's dynamo default."""
    base = FAMILIES_USED[family]
    randomized = dataclasses.replace(base, build=lambda: randomize(base.build()))
    if not optimize:
        return export(randomized, exporter, path)
    model, inputs = randomized.build(), randomized.inputs(*EXPORT_SHAPE)
    dims = {"batch": torch.export.Dim("batch", min=1, max=1024), "sequence": torch.export.Dim("sequence", min=1, max=64)}
    shapes = {n: {axis: dims[sym] for axis, sym in base.dynamic[n].items()} for n in inputs}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=list(inputs), dynamic_shapes=shapes,
                          output_names=["last_hidden_state"], opset_version=18, dynamo=True, verbose=False)
    return path


def calibration_feeds(family: str, count: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    gen = np.random.default_rng(seed)
    return [{"input_ids": gen.integers(0, 100, INPUT_SHAPE).astype(np.int64),
             "attention_mask": np.ones(INPUT_SHAPE, np.int64)} for _ in range(count)]


def ort_optimized(*, model_type: str, opt_level: int = 1, **options) -> Callable[[Path, Path, str], None]:
    """onnxruntime's transformer optimizer (`optimize_model`) with the given fusion options."""

    def transform(src: Path, dst: Path, family: str) -> None:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        fusion = FusionOptions(model_type)
        for key, value in options.items():
            setattr(fusion, key, value)
        optimized = optimize_model(str(src), model_type=model_type, num_heads=2, hidden_size=32, opt_level=opt_level,
                                   optimization_options=fusion)
        optimized.save_model_to_file(str(dst))

    return transform


def dynamic_int8(src: Path, dst: Path, family: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # needed after onnxruntime's optimizer (com.microsoft ops)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options=extra)


def static_qdq(src: Path, dst: Path, family: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration_feeds(family))

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)


def _unchanged(src: Path, dst: Path, family: str) -> None:
    dst.write_bytes(src.read_bytes())


def then(first: Callable, second: Callable) -> Callable[[Path, Path, str], None]:
    def transform(src: Path, dst: Path, family: str) -> None:
        middle = dst.with_name(dst.stem + ".step1.onnx")
        first(src, middle, family)
        second(middle, dst, family)

    return transform


FUSED = ("BiasGelu", "FastGelu", "Gelu", "QuickGelu")
FORMS = {f.name: f for f in [
    Form("legacy", "bert", "legacy", _unchanged, "gelu", "matmul", mlp_ops=("Erf",)),
    Form("dynamo", "bert", "dynamo", _unchanged, "gelu", "matmul", mlp_ops=("Erf",)),
    Form("ort_bias_gelu", "bert", "legacy", ort_optimized(model_type="bert"), "gelu", "matmul",
         down_bias=False, mlp_ops=FUSED),
    Form("ort_bias_gelu_dynamo_o2", "bert", "dynamo", ort_optimized(model_type="bert", opt_level=2), "gelu", "matmul",
         down_bias=False, mlp_ops=FUSED),
    Form("ort_fast_gelu", "bert", "legacy", ort_optimized(model_type="bert", enable_gelu_approximation=True),
         "gelu_tanh", "matmul", down_bias=False, mlp_ops=FUSED),
    Form("ort_gelu_no_bias_fusion", "bert", "legacy",
         ort_optimized(model_type="bert", enable_bias_gelu=False, enable_bias_skip_layer_norm=False), "gelu", "matmul",
         mlp_ops=FUSED),
    Form("ort_gpt2_fast_gelu", "gpt2", "legacy", ort_optimized(model_type="gpt2"), "gelu_tanh", "matmul",
         down_bias=False, mlp_ops=FUSED),
    Form("ort_gpt2_fast_gelu_no_bias", "gpt2", "legacy", ort_optimized(model_type="gpt2", enable_bias_gelu=False),
         "gelu_tanh", "matmul", down_bias=False, mlp_ops=FUSED),
    Form("ort_clip_quick_gelu", "clip", "legacy", ort_optimized(model_type="clip"), "quick_gelu", "matmul",
         down_bias=False, mlp_ops=FUSED),
    Form("int8_dynamic", "bert", "legacy", dynamic_int8, "gelu", "int8", quantized=True, mlp_ops=("Erf",)),
    Form("int8_dynamic_gpt2", "gpt2", "legacy", dynamic_int8, "gelu_tanh", "reshape_int8", quantized=True,
         mlp_ops=("Tanh",)),
    Form("int8_dynamic_llama", "llama", "legacy", dynamic_int8, "silu", "int8", quantized=True, down_bias=False),
    Form("int8_dynamic_ort_bias_gelu", "bert", "legacy", then(ort_optimized(model_type="bert"), dynamic_int8), "gelu",
         "int8", quantized=True, down_bias=False, mlp_ops=FUSED),
    Form("qdq_static", "bert", "legacy", static_qdq, "gelu", "matmul", quantized=True, mlp_ops=("Erf",)),
]}


def make(form: Form, folder: Path, exports: dict | None = None) -> onnx.ModelProto:
    """The form's model (written in `folder`), loaded with its weights; `exports` caches the torch exports
    that several forms start from."""
    optimize = form.exporter == "dynamo" and form.transform in (dynamic_int8, static_qdq)
    key = (form.family, form.exporter, optimize)
    exports = {} if exports is None else exports
    if key not in exports:
        exports[key] = export_random(form.family, form.exporter, folder / f"{form.family}_{form.exporter}.onnx",
                                     optimize=optimize)
    out = folder / f"{form.name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        form.transform(exports[key], out, form.family)
    return load_model(out)


# -- an exact stand-in for a block: the dense MLP the detector read, in standard ONNX ops -----------------

_ACT_TEXT = {  # y = act(h), as ONNX text (constants c_*)
    "relu": "y = Relu(h)",
    "gelu": "d = Div(h, c_sqrt2)\n e = Erf(d)\n e1 = Add(e, c_one)\n p = Mul(h, e1)\n y = Mul(p, c_half)",
    "gelu_tanh": ("p3 = Pow(h, c_three)\n k = Mul(p3, c_gk)\n s = Add(h, k)\n t0 = Mul(s, c_s2pi)\n t = Tanh(t0)\n"
                  " t1 = Add(t, c_one)\n p = Mul(h, t1)\n y = Mul(p, c_half)"),
    "silu": "s = Sigmoid(h)\n y = Mul(h, s)",
    "quick_gelu": "k = Mul(h, c_qg)\n s = Sigmoid(k)\n y = Mul(h, s)",
}
_CONSTS = ("c_sqrt2 = Constant <value = float {1.41421356}> ()\n c_one = Constant <value = float {1.0}> ()\n"
           " c_half = Constant <value = float {0.5}> ()\n c_three = Constant <value = float {3.0}> ()\n"
           " c_gk = Constant <value = float {0.044715}> ()\n c_s2pi = Constant <value = float {0.7978845608}> ()\n"
           " c_qg = Constant <value = float {1.702}> ()\n")


def _activation_function(name: str) -> onnx.FunctionProto:
    return onnx.parser.parse_function(f"""
    <domain: "standin", opset_import: ["": 18]>
    {name} (h) => (y) {{
     {_CONSTS} {_ACT_TEXT[name]}
    }}""")


def dense_stand_in(converted: onnx.ModelProto, mlps) -> onnx.ModelProto:
    """`converted` with each block replaced by the dense MLP that the detector read for it (`MlpMatch`
    weights, float32): if the block sits where the MLP sat and accounts for its biases exactly, this model
    computes what the original computed."""
    from onnx import helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(converted)
    by_output = {mlp.output: mlp for mlp in mlps}
    nodes, inits, acts = [], [], set()
    for node in model.graph.node:
        if node.domain != "quweit":
            nodes.append(node)
            continue
        mlp = by_output[node.output[0]]
        prefix = f"standin{len(acts) + len(inits)}/"

        def linear(x: str, w, b, tag: str, prefix: str = prefix) -> str:
            inits.append(numpy_helper.from_array(w, prefix + tag + "/w"))
            nodes.append(helper.make_node("MatMul", [x, prefix + tag + "/w"], [prefix + tag + "/xw"]))
            if b is None:
                return prefix + tag + "/xw"
            inits.append(numpy_helper.from_array(b, prefix + tag + "/b"))
            nodes.append(helper.make_node("Add", [prefix + tag + "/xw", prefix + tag + "/b"], [prefix + tag + "/y"]))
            return prefix + tag + "/y"

        acts.add(mlp.activation)
        h = linear(node.input[0], mlp.w_up, mlp.b_up, "up")
        a = prefix + "act"
        if mlp.w_gate is None:
            nodes.append(helper.make_node(mlp.activation, [h], [a], domain="standin"))
        else:
            g = linear(node.input[0], mlp.w_gate, mlp.b_gate, "gate")
            nodes.append(helper.make_node(mlp.activation, [g], [prefix + "gact"], domain="standin"))
            nodes.append(helper.make_node("Mul", [prefix + "gact", h], [a]))
        linear(a, mlp.w_down, mlp.b_down, "down")
        nodes[-1].output[0] = node.output[0]  # the block's output value, read by the rest of the graph
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    model.functions.extend(_activation_function(name) for name in sorted(acts))
    model.opset_import.append(helper.make_opsetid("standin", 1))
    return model


def export_training_mode(path: Path) -> Path:
    """A T5 encoder exported by the dynamo exporter without `.eval()`: `Dropout(training_mode=True)` inside
    every MLP. (A training-mode wrapper around an `.eval()` model exports no Dropout with torch 2.13: the
    exporter follows each Dropout module's own flag.)"""
    base = FAMILIES["t5"]
    model = randomize(base.build()).train()
    inputs = base.inputs(*EXPORT_SHAPE)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=list(inputs),
                          output_names=["last_hidden_state"], opset_version=18, dynamo=True, optimize=False, verbose=False)
    return path
