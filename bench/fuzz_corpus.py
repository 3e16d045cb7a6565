"""The fuzzer's seed models: real exports and what quweit makes of them, written once into a folder.

- exports: small random-weight BERT (legacy exporter), GPT-2 (legacy) and Llama (dynamo, weights in a
  side file) from `tests/models.py`, and, unless `small`, the pretrained all-MiniLM-L6-v2
  (`quweit.converter.minilm.export_minilm`);
- converted: each small export after `quweit-convert` (blocks + their decomposition);
- blocks: single-block models over the edges of the structure (n = 1..8, 1-3 layers, input widths 2..16).

Each seed keeps its calibration inputs (npz) for `quweit-convert --calib` and the inputs the runtime
targets feed it. A manifest records the seeds; a folder with a manifest of the same version is reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "corpus.json"
#: Bump when the corpus' contents change, so an old folder is rebuilt rather than reused.
CORPUS_VERSION = 3
#: Export shape of the calibration and run inputs of the token models: small, so runs are cheap.
CALIB_SAMPLES, CALIB_LENGTH = 4, 8
SMALL_EXPORTS = (("bert", "legacy"), ("gpt2", "legacy"), ("llama", "dynamo"))
#: (lut_inputs, layers, input_bits, in_features, out_features, thresholds_per_feature, group)
BLOCK_SHAPES = ((1, 1, 2, 3, 2, 1, 1), (3, 2, 8, 6, 4, 3, 2), (6, 1, 12, 16, 8, 8, 4), (8, 3, 16, 5, 3, 4, 2),
                (7, 2, 4, 4, 4, 2, 3))


@dataclasses.dataclass(frozen=True)
class Seed:
    name: str
    kind: str  # "export", "converted" or "block"
    model: str  # file name inside the corpus folder
    side_files: tuple[str, ...]  # external data files the model reads
    calib: str  # npz of model inputs (first axis: samples)
    weight: float  # relative share of the cases drawn from this seed

    def files(self) -> tuple[str, ...]:
        return (self.model, *self.side_files, self.calib)


def load_corpus(folder: Path) -> list[Seed]:
    manifest = json.loads((folder / MANIFEST).read_text())
    return [Seed(**{**s, "side_files": tuple(s["side_files"])}) for s in manifest["seeds"]]


def build_corpus(folder: Path, *, small: bool, log=print) -> list[Seed]:
    """The seeds in `folder` (built unless a manifest of this version and size is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("version") == CORPUS_VERSION and data.get("small") == small:
            return load_corpus(folder)
    seeds = _exports(folder, small, log) + _blocks(folder)
    seeds += _converted(folder, [s for s in seeds if s.kind == "export" and s.name != "minilm"], log)
    manifest.write_text(json.dumps({"version": CORPUS_VERSION, "small": small,
                                    "seeds": [dataclasses.asdict(s) for s in seeds]}, indent=1))
    return seeds


def _side_files(path: Path) -> tuple[str, ...]:
    data = path.with_name(path.name + ".data")
    return (data.name,) if data.exists() else ()


def _exports(folder: Path, small: bool, log) -> list[Seed]:
    sys.path.insert(0, str(ROOT / "tests"))
    import models

    seeds = []
    for family, exporter in SMALL_EXPORTS:
        path = folder / f"{family}.onnx"
        log(f"corpus: exporting {family} ({exporter} exporter)")
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            models.export(models.FAMILIES[family], exporter, path)
        calib = folder / f"{family}.calib.npz"
        np.savez(calib, **models.reference_inputs(models.FAMILIES[family], CALIB_SAMPLES, CALIB_LENGTH))
        seeds.append(Seed(family, "export", path.name, _side_files(path), calib.name, 1.0))
    if not small:
        from quweit.converter import minilm

        log("corpus: exporting the pretrained all-MiniLM-L6-v2")
        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            path = minilm.export_minilm(folder / "minilm.onnx")
        calib = folder / "minilm.calib.npz"
        np.savez(calib, **minilm.calibration_inputs(CALIB_SAMPLES))
        # 90 MB per case written and read: a small share keeps the run within its hour
        seeds.append(Seed("minilm", "export", path.name, _side_files(path), calib.name, 0.15))
    return seeds


def _converted(folder: Path, exports: list[Seed], log) -> list[Seed]:
    from quweit.converter.cli import main as convert_main

    seeds = []
    for export in exports:
        out = folder / f"{export.name}.quweit.onnx"
        log(f"corpus: converting {export.name}")
        with _quiet():
            code = convert_main([str(folder / export.model), "-o", str(out), "--calib", str(folder / export.calib),
                                 "--quiet", "--no-sensitivity", "--force"])
        if code != 0:
            raise RuntimeError(f"corpus: converting {export.model} failed with exit code {code}")
        seeds.append(Seed(f"{export.name}.quweit", "converted", out.name, _side_files(out), export.calib, 1.0))
    return seeds


def _blocks(folder: Path) -> list[Seed]:
    from quweit.custom_ops import make_block_model, random_params
    from quweit.onnxio import save_model

    seeds = []
    for k, (n, layers, bits, d_in, d_out, t, group) in enumerate(BLOCK_SHAPES):
        rng = np.random.default_rng(k)
        hidden = tuple(int(v) for v in rng.integers(4, 24, size=layers - 1))
        params = random_params(rng, in_features=d_in, out_features=d_out, thresholds_per_feature=t, lut_inputs=n,
                               layer_sizes=(*hidden, d_out * group), input_bits=bits)
        name = f"block_n{n}_k{layers}_b{bits}"
        save_model(make_block_model(params, ("batch", "sequence")), folder / f"{name}.onnx", force=True)
        calib = folder / f"{name}.calib.npz"
        np.savez(calib, X=_edge_inputs(params, rng))
        seeds.append(Seed(name, "block", f"{name}.onnx", (), calib.name, 0.6))
    return seeds


def _edge_inputs(params, rng: np.random.Generator) -> np.ndarray:
    """Activations `[samples, length, D_in]` with exact rounding ties, saturation, NaN, +-inf, denormals."""
    shape = (CALIB_SAMPLES, CALIB_LENGTH, params.in_features)
    span = float(params.qmax + 1)
    units = rng.uniform(-1.5 * span, 1.5 * span, size=shape)
    units = np.where(rng.random(shape) < 0.3, np.floor(units) + 0.5, units)
    x = (units / params.input_scale.astype(np.float64)).astype(np.float32)
    special = rng.random(shape) < 0.1
    x[special] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1.4e-45, 3.4e38, -3.4e38],
                                     dtype=np.float32), size=int(special.sum()))
    return x


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
