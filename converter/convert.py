"""`convert`: detect every MLP, calibrate, fit blocks, choose layers, rewrite - the converter's one entry point.

Fitting is sequential by default: block i is distilled from MLP i on the inputs that the model with
blocks 0..i-1 already in place produces (errors compound through a pretrained model). Each MLP also gets
a local fit on the original model's activations, which gives the sensitivity table (model fidelity with
only that MLP converted) and the order in which `layers="auto"` converts MLPs until the fidelity floor.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np
import onnx
from quweit.custom_ops import BlockConfig, WeightlessBlockParams, default_config
from quweit.onnxio import ONNXRUNTIME_ERRORS, Run, capture, check_inputs
from tqdm.auto import tqdm

from . import calibrate, costs
from .bypass import Replacement, as_replacement
from .detect import Detection, find_mlps, prepare, rewrite_mlps
from .distill import Recipe, distill, fit_sequential
from .errors import BadInputError, NoMlpError
from .mlp import MlpMatch

ParamsFor = Callable[[MlpMatch], "WeightlessBlockParams | None"]
DEFAULT_FIDELITY_FLOOR = 0.9
CALIB_BATCH = 16
#: Seconds a recipe's `total_seconds` keeps back after distillation: the final fidelity and the write.
FINISH_SECONDS = 20.0


def replace_mlps(model: onnx.ModelProto, params_for: ParamsFor | None = None) -> tuple[onnx.ModelProto, dict]:
    """Structural rewrite without fitting: each MLP for which `params_for` returns a block is replaced.

    Without `params_for`, every MLP gets a random valid block of the default structure (for benchmarks
    of a converted model's speed, not its quality). Returns (model, report).
    """
    prepared = prepare(model)
    detection = find_mlps(prepared)
    if params_for is None:
        rng = np.random.default_rng(0)

        def params_for(mlp: MlpMatch) -> WeightlessBlockParams:
            from quweit.custom_ops import random_params

            cfg = default_config(mlp.d_in, mlp.d_out)
            return random_params(rng, in_features=mlp.d_in, out_features=mlp.d_out, lut_inputs=cfg.lut_inputs,
                                 thresholds_per_feature=cfg.thresholds_per_feature,
                                 layer_sizes=cfg.layer_sizes(mlp.d_out), input_bits=cfg.input_bits)

    chosen = {}
    for mlp in detection.mlps:
        params = params_for(mlp)
        if params is not None:
            chosen[mlp.output] = params
    converted = _rewrite_all(prepared, chosen)
    reasons = {m.output: "not selected" for m in detection.mlps if m.output not in chosen}
    return converted, build_report(prepared, converted, detection, chosen, reasons)


def parse_layers(layers: str, count: int) -> str | list[int]:
    """"all", "auto", "none" or comma-separated MLP indices (0-based, graph order)."""
    text = layers.strip().lower()
    if text in ("all", "auto"):
        return text
    if text == "none":
        return []
    try:
        picked = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise BadInputError(f"--layers {layers!r}: expected 'all', 'auto', 'none' or indices like '0,2,5'") from None
    bad = [i for i in picked if not 0 <= i < count]
    if bad:
        raise BadInputError(f"--layers {layers!r}: indices {bad} outside [0, {count}) ({count} MLPs found)")
    return picked


def convert(
    model: onnx.ModelProto,
    *,
    calib: dict[str, np.ndarray] | None = None,
    layers: str = "all",
    config: BlockConfig | None = None,
    budget_seconds: float | None = None,
    seed: int = 0,
    progress: bool = True,
    fidelity_floor: float = DEFAULT_FIDELITY_FLOOR,
    sequential: bool = True,
    sensitivity: bool = True,
    fit: Callable | None = None,
    recipe: Recipe | None = None,
    distill_data: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """The converted model (blocks + their decomposition) and the report (see `build_report`).

    With a `recipe` (`distill.Recipe`), the chosen MLPs are replaced sequentially by block + low-rank
    bypass, each reconstructed by gradient, and then `recipe.distill_steps` end-to-end steps train the
    converted model against the original on `distill_data` (default: the calibration samples that are
    not held out for the fidelity measure).
    """
    from .fitting import fit_block

    fit = fit or fit_block
    started = time.monotonic()
    prepared = prepare(model)
    detection = find_mlps(prepared)
    if not detection.mlps:
        raise NoMlpError(detection.no_mlp_message(), detection.rejected)
    selection = parse_layers(layers, len(detection.mlps))
    synthetic = calib is None
    if synthetic:
        calib = calibrate.synthetic_calibration(prepared, seed=seed)
    else:
        check_inputs(prepared, calib, "--calib")
    fit_feeds, held_out = calibrate.split(prepared, calib, CALIB_BATCH)
    try:  # the first run of the user's model: onnxruntime refusing it is bad input, not a bug
        reference = calibrate.outputs(prepared, held_out)
    except ONNXRUNTIME_ERRORS as err:
        raise BadInputError(f"onnxruntime cannot run the model: {str(err).strip().splitlines()[0]}") from err
    mlps = detection.mlps
    need_local = sensitivity or selection == "auto" or not sequential
    # budget: an even share for every fit that may run (local fits, then sequential refits)
    most_fits = (len(mlps) if need_local else 0) + (len(mlps) if sequential else 0)
    per_fit = None if budget_seconds is None else max(0.0, budget_seconds) / max(1, most_fits)

    def fit_one(mlp: MlpMatch, x: np.ndarray, y: np.ndarray, bar) -> WeightlessBlockParams:
        for what, value in (("input", x), ("output", y)):
            if not np.isfinite(value).all():
                raise BadInputError(f"MLP {mlps.index(mlp)} ({mlp.output}): its {what} is NaN or infinite on the "
                                    "calibration data (check the model's weights and the --calib inputs)")
        cfg = config or default_config(mlp.d_in, mlp.d_out)
        bar.set_postfix_str(f"MLP {mlps.index(mlp)} on {len(x)} tokens")
        params = fit(x, y, config=cfg, budget_seconds=per_fit, seed=seed, progress=False)
        bar.update(1)
        return params

    with tqdm(total=len(mlps) if need_local else 0, desc="fitting blocks", unit="block", disable=not progress) as bar:
        local: dict[str, WeightlessBlockParams] = {}
        scores: dict[str, float] = {}
        if need_local:
            pairs = capture(prepared, fit_feeds, [n for m in mlps for n in (m.input, m.output)])
            for mlp in mlps:
                local[mlp.output] = fit_one(mlp, pairs[mlp.input], pairs[mlp.output], bar)
            del pairs
            for i, mlp in enumerate(mlps):
                bar.set_postfix_str(f"sensitivity: model with only MLP {i} converted")
                alone, _ = rewrite_mlps(prepared, {mlp.output: local[mlp.output]})
                scores[mlp.output] = calibrate.fidelity(reference, calibrate.outputs(alone, held_out))
        if selection == "all":
            chosen_mlps = list(mlps)
        elif selection == "auto":
            chosen_mlps = _auto_select(prepared, mlps, local, scores, reference, held_out, fidelity_floor)
        else:
            chosen_mlps = [mlps[i] for i in selection]
        chosen: dict[str, WeightlessBlockParams | Replacement] = {}
        if recipe is not None:  # always sequential
            bar.total += len(chosen_mlps)
            bar.refresh()
            bar.set_postfix_str("sequential reconstruction")
            chosen = fit_sequential(prepared, chosen_mlps, fit_feeds,
                                    lambda m: config or default_config(m.d_in, m.d_out), recipe, seed=seed,
                                    on_done=lambda m: bar.update(1))
        else:
            refits = [m for i, m in enumerate(chosen_mlps) if sequential and (i > 0 or m.output not in local)]
            bar.total += len(refits)
            bar.refresh()
            for mlp in chosen_mlps:  # graph order
                if mlp in refits:
                    current, _ = rewrite_mlps(prepared, chosen)
                    pairs = capture(current, fit_feeds, [mlp.input, mlp.output])
                    chosen[mlp.output] = fit_one(mlp, pairs[mlp.input], pairs[mlp.output], bar)
                else:
                    chosen[mlp.output] = local[mlp.output]

    converted = _rewrite_all(prepared, chosen)
    distilled = None
    if recipe is not None and recipe.distill_steps and chosen:
        data = distill_data if distill_data is not None else _stack(fit_feeds)
        tick = time.monotonic()
        if recipe.total_seconds is not None:  # what fitting left, less the final measure and the write
            left = recipe.total_seconds - (tick - started) - FINISH_SECONDS
            recipe = dataclasses.replace(recipe, distill_seconds=max(0.0, min(left, recipe.distill_seconds or left)))
        converted, losses = distill(converted, prepared, data, recipe, seed=seed, progress=progress)
        distilled = {"steps": len(losses), "seconds": round(time.monotonic() - tick, 1),
                     "load_average": [round(v, 2) for v in os.getloadavg()],
                     "samples": int(next(iter(data.values())).shape[0]),
                     "budget_seconds": recipe.distill_seconds,
                     "loss_first_last": [losses[0], losses[-1]] if losses else None}
    final = calibrate.fidelity(reference, calibrate.outputs(converted, held_out)) if chosen else 1.0
    reasons = {m.output: ("below the fidelity floor" if selection == "auto" else "not selected")
               for m in mlps if m.output not in chosen}
    report = build_report(prepared, converted, detection, chosen, reasons, sensitivity=scores)
    report.update({
        "fidelity": final,
        "fidelity_measure": "mean cosine of the first output per token, converted vs original, held-out calibration data",
        "fidelity_floor": fidelity_floor if selection == "auto" else None,
        "layers": layers,
        "calibration": "synthetic (random inputs from the graph's input types)" if synthetic else "given",
        "calibration_samples": int(next(iter(calib.values())).shape[0]),
        "sequential": sequential,
        "recipe": recipe.summary() if recipe is not None else None,
        "distillation": distilled,
        "seconds": round(time.monotonic() - started, 1),
    })
    return converted, report


def _stack(runs: list[Run]) -> dict[str, np.ndarray]:
    """The real samples of calibration runs (slices of the same arrays) back into one array per input."""
    return {name: np.concatenate([r.feeds[name][:r.rows] for r in runs]) for name in runs[0].feeds}


def _rewrite_all(prepared: onnx.ModelProto, chosen: dict[str, WeightlessBlockParams]) -> onnx.ModelProto:
    converted, count = rewrite_mlps(prepared, chosen)
    if count != len(chosen):  # detection and rewrite share their rules: a mismatch is a bug, never a result
        raise RuntimeError(f"internal error: rewrote {count} MLPs but {len(chosen)} were chosen")
    return converted


def _auto_select(prepared, mlps, local, scores, reference, held_out, floor) -> list[MlpMatch]:
    """MLPs in order of least fidelity lost alone, added while the model with all of them stays >= floor."""
    chosen: list[MlpMatch] = []
    for mlp in sorted(mlps, key=lambda m: -scores[m.output]):
        trial = chosen + [mlp]
        model, _ = rewrite_mlps(prepared, {m.output: local[m.output] for m in trial})
        if calibrate.fidelity(reference, calibrate.outputs(model, held_out)) < floor:
            break
        chosen = trial
    return [m for m in mlps if m in chosen]


def build_report(prepared, converted, detection: Detection, chosen: dict, reasons: dict, *, sensitivity=None) -> dict:
    sensitivity = sensitivity or {}
    rows = []
    for index, mlp in enumerate(detection.mlps):
        row = {"index": index, **mlp.summary(), "replaced": mlp.output in chosen,
               "reason": None if mlp.output in chosen else reasons.get(mlp.output, "not selected")}
        if mlp.output in sensitivity:
            row["fidelity_alone"] = sensitivity[mlp.output]
        rows.append(row)
    return {
        "mlps_found": len(detection.mlps),
        "mlps_replaced": len(chosen),
        **costs.totals(prepared, converted, [as_replacement(v).block for v in chosen.values()]),
        "bypass_macs": sum(r.bypass.macs for r in map(as_replacement, chosen.values()) if r.bypass is not None),
        "mlps": rows,
        "not_matched": [{"node": w, "reason": r} for w, r in detection.rejected],
    }
