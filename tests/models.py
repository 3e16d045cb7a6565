"""Random-weight transformers of several families, built in code and exported to ONNX (no downloads).

Tiny configs (2 layers, hidden 32) keep the exports fast; each family has exactly one MLP per layer,
which is what the converter tests assert.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYERS = 2
HIDDEN = 32
INTERMEDIATE = 64


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: how to build it, its example inputs, and what the converter must find."""

    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int, int], dict[str, torch.Tensor]]  # (batch, sequence) -> named inputs
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: symbolic name}
    mlps: int = LAYERS
    mlp_family: str = ""  # the rule family expected to match
    #: the legacy exporter bakes batch/sequence into nn.MultiheadAttention's Reshapes: the exported
    #: original itself only runs at the export shape (an exporter limitation, checked by the tests)
    legacy_static: bool = False


class _Positional(torch.nn.Module):
    """Wraps a transformers model so the export has named tensor inputs and one tensor output."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        return self.model(**{n: given[n] for n in self.names}).last_hidden_state


def _tokens(batch: int, seq: int, vocab: int = 100) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    return {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.int64),
    }


def _seeded(fn):
    def build():
        torch.manual_seed(0)
        return fn().eval()
    return build


TOKEN_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=INTERMEDIATE, max_position_embeddings=64)
    return _Positional(BertModel(cfg, add_pooling_layer=True), ("input_ids", "attention_mask"))


def _gpt2():
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64)
    return _Positional(GPT2Model(cfg), ("input_ids", "attention_mask"))


def _t5():
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=100, d_model=HIDDEN, d_kv=16, d_ff=INTERMEDIATE, num_layers=LAYERS, num_heads=2,
                   feed_forward_proj="relu")
    return _Positional(T5EncoderModel(cfg), ("input_ids", "attention_mask"))


def _opt():
    from transformers import OPTConfig, OPTModel

    cfg = OPTConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                    ffn_dim=INTERMEDIATE, max_position_embeddings=64, word_embed_proj_dim=HIDDEN)
    return _Positional(OPTModel(cfg), ("input_ids", "attention_mask"))


def _llama():
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=100, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return _Positional(LlamaModel(cfg), ("input_ids", "attention_mask"))


def _vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                    num_attention_heads=2, intermediate_size=INTERMEDIATE)
    return _Positional(ViTModel(cfg), ("pixel_values",))


def _torch_encoder():
    layer = torch.nn.TransformerEncoderLayer(d_model=HIDDEN, nhead=2, dim_feedforward=INTERMEDIATE,
                                             batch_first=True, dropout=0.0)
    return _PlainEncoder(torch.nn.TransformerEncoder(layer, num_layers=LAYERS, enable_nested_tensor=False))


class _PlainEncoder(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(100, HIDDEN)
        self.encoder = encoder

    def forward(self, input_ids=None):
        return self.encoder(self.embed(input_ids))


def _pixels(batch: int, seq: int) -> dict[str, torch.Tensor]:
    del seq
    gen = torch.Generator().manual_seed(batch)
    return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=gen)}


FAMILIES = {
    "bert": Family("bert", _seeded(_bert), _tokens, TOKEN_AXES, mlp_family="linear_act_linear"),
    "gpt2": Family("gpt2", _seeded(_gpt2), _tokens, TOKEN_AXES, mlp_family="linear_act_linear"),
    "vit": Family("vit", _seeded(_vit), _pixels, {"pixel_values": {0: "batch"}}, mlp_family="linear_act_linear"),
    "t5": Family("t5", _seeded(_t5), _tokens, TOKEN_AXES, mlp_family="linear_act_linear"),
    "opt": Family("opt", _seeded(_opt), _tokens, TOKEN_AXES, mlp_family="linear_act_linear"),
    "llama": Family("llama", _seeded(_llama), _tokens, TOKEN_AXES, mlp_family="gated"),
    "torch_encoder": Family(
        "torch_encoder", _seeded(_torch_encoder), lambda b, s: {"input_ids": _tokens(b, s)["input_ids"]},
        {"input_ids": {0: "batch", 1: "sequence"}}, mlp_family="linear_act_linear", legacy_static=True,
    ),
}
EXPORTERS = ("legacy", "dynamo")


EXPORT_SHAPE = (2, 5)


def export(family: Family, exporter: str, path: Path, *, batch: int = EXPORT_SHAPE[0], seq: int = EXPORT_SHAPE[1],
           static: bool = False) -> Path:
    """Export `family` with `exporter` ("legacy" TorchScript or "dynamo") to `path`, dynamic batch/sequence
    (or, with `static`, every input shape fixed to `batch` x `seq` as many deployment exports are)."""
    model = family.build()
    inputs = family.inputs(batch, seq)
    names = list(inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer kernel has no ONNX export
        if exporter == "legacy":
            torch.onnx.export(model, (dict(inputs),), str(path), input_names=names,
                              output_names=["last_hidden_state"],
                              dynamic_axes=None if static else {n: dict(family.dynamic[n]) for n in names},
                              opset_version=18,
                              dynamo=False)
        elif exporter == "dynamo":
            symbols: dict[str, object] = {}
            shapes = {
                n: {axis: symbols.setdefault(sym, torch.export.Dim(sym, min=1, max=1024 if sym == "batch" else 64))
                    for axis, sym in family.dynamic[n].items()}
                for n in names
            }
            torch.onnx.export(model, (), str(path), kwargs=inputs, input_names=names,
                              output_names=["last_hidden_state"], dynamic_shapes=None if static else shapes,
                              opset_version=18,
                              dynamo=True, optimize=False, verbose=False)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    return path


def reference_inputs(family: Family, batch: int, seq: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in family.inputs(batch, seq).items()}


def without_decomposition(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without the block's function decomposition: only the kernel can run its blocks."""
    from quweit.custom_ops import DOMAIN, OP_TYPE

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept = [f for f in stripped.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del stripped.functions[:]
    stripped.functions.extend(kept)
    return stripped
