"""`convert`: detect every MLP, calibrate, fit blocks, choose layers, rewrite - the converter's one entry point.

Fitting is sequential by default: block i is distilled from MLP i on the inputs that the model with
blocks 0..i-1 already in place produces (errors compound through a pretrained model). Each MLP also gets
a local fit on the original model's activations, which gives the sensitivity table (model fidelity with
only that MLP converted) and the order in which `layers="auto"` converts MLPs until the fidelity floor.

Everything happens on one in-memory (onnx-ir) model: calibration data streams through it MLP by MLP
(`stages`), each MLP's activations are captured, fitted and dropped before the next one, and a chosen
block is written into the model through its handle as soon as it is fitted. The stream that carries the
held-out data through the converted MLPs gives the final fidelity at the end; no step re-serialises the
model or builds a session of the whole model.

With a `recipe` (`distill.Recipe`), the chosen MLPs are replaced sequentially by block + low-rank bypass,
each reconstructed by gradient on captured pairs of the model with the earlier ones converted, and then
`recipe.distill_steps` end-to-end steps train the converted model against the original.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
from quweit.custom_ops import BlockConfig, WeightlessBlockParams, default_config
from quweit.onnxio import ONNXRUNTIME_ERRORS, Run, check_inputs
from tqdm.auto import tqdm

from . import calibrate, costs
from .bypass import as_replacement
from .detect import Detection, detect, finish, normalise, replace_with_block
from .distill import Recipe, distill, fit_sequential
from .errors import BadInputError, NoMlpError
from .mlp import MlpMatch
from .stages import Stages, Stream

ParamsFor = Callable[[MlpMatch], "WeightlessBlockParams | None"]
DEFAULT_FIDELITY_FLOOR = 0.9
CALIB_BATCH = 16
#: Seconds a recipe's `total_seconds` keeps back after distillation: the final fidelity and the write.
FINISH_SECONDS = 20.0


def replace_mlps(model: onnx.ModelProto | ir.Model, params_for: ParamsFor | None = None
                 ) -> tuple[onnx.ModelProto | ir.Model, dict]:
    """Structural rewrite without fitting: each MLP for which `params_for` returns a block is replaced.

    Without `params_for`, every MLP gets a random valid block of the default structure (for benchmarks
    of a converted model's speed, not its quality). Returns (model of the kind given, report).
    """
    prepared = normalise(model)
    before = costs.counts(prepared)
    detection = detect(prepared)
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
            replace_with_block(prepared, mlp, params)
    finish(prepared)
    reasons = {m.output: "not selected" for m in detection.mlps if m.output not in chosen}
    return _kind_of(model, prepared), build_report(before, prepared, detection, chosen, reasons)


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
    model: onnx.ModelProto | ir.Model,
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
) -> tuple[onnx.ModelProto | ir.Model, dict]:
    """The converted model (blocks + their decomposition; a proto for a proto, an onnx-ir model - the
    same one, rewritten in place - for an onnx-ir model) and the report (see `build_report`).

    With a `recipe`, `recipe.distill_steps` end-to-end steps train the converted model against the
    original on `distill_data` (default: the calibration samples that are not held out for the fidelity
    measure); the result is then a proto.
    """
    from .fitting import fit_block

    started, cpu = time.monotonic(), time.process_time()
    prepared = normalise(model)
    before = costs.counts(prepared)
    detection = detect(prepared)
    mlps = detection.mlps
    if not mlps:
        raise NoMlpError(detection.no_mlp_message(), detection.rejected)
    selection = parse_layers(layers, len(mlps))
    synthetic = calib is None
    if synthetic:
        calib = calibrate.synthetic_calibration(prepared, seed=seed)
    else:
        check_inputs(prepared, calib, "--calib")
    fit_runs, held_out = calibrate.split(prepared, calib, CALIB_BATCH)
    need_local = sensitivity or selection == "auto" or not sequential
    # budget: an even share for every fit that may run (local fits, then sequential refits)
    most_fits = (len(mlps) if need_local else 0) + (len(mlps) if sequential else 0)
    per_fit = None if budget_seconds is None else max(0.0, budget_seconds) / max(1, most_fits)
    fitting = _Fitter(fit or fit_block, config, per_fit, seed, mlps)

    distilled = None
    with tqdm(total=0, desc="fitting blocks", unit="block", disable=not progress) as bar:
        fitting.bar = bar
        stages = Stages(prepared, mlps)
        first = None
        if selection == "auto" or (recipe is not None and need_local):
            first = _first_run(_Pass(stages, fit_runs, held_out, fitting, local=need_local, sensitivity=True).run)
        if selection == "auto":
            order = _auto_select(stages, held_out, first, fidelity_floor)
            chosen_idx = [k for k in range(len(mlps)) if k in order]
        else:
            chosen_idx = list(range(len(mlps))) if selection == "all" else selection
        if recipe is not None:
            reference = first.reference if first is not None else _first_run(Stream(stages, held_out).finish)
            scores = first.scores if first is not None else {}
            stages.release(len(mlps) - 1)
            chosen, converted, distilled = _with_recipe(
                prepared, [mlps[k] for k in chosen_idx], fit_runs, config, recipe, seed, bar, distill_data, progress,
                started)
            fidelity = calibrate.fidelity(reference, calibrate.outputs(converted, held_out)) if chosen else 1.0
        else:
            if first is not None:
                final = _Pass(stages, fit_runs, held_out, fitting, chosen=chosen_idx, sequential=sequential,
                              local_blocks=first.local, reference=first.reference, rewrite=True).run()
                scores, reference = first.scores, first.reference
            else:
                final = _first_run(_Pass(stages, fit_runs, held_out, fitting, chosen=chosen_idx, sequential=sequential,
                                         local=need_local, sensitivity=sensitivity, rewrite=True).run)
                scores, reference = final.scores, final.reference
            chosen = {mlps[k].output: final.blocks[k] for k in chosen_idx}
            fidelity = calibrate.fidelity(reference, final.converted) if chosen else 1.0
            finish(prepared)
            converted = prepared
    reasons = {m.output: ("below the fidelity floor" if selection == "auto" else "not selected")
               for m in mlps if m.output not in chosen}
    report = build_report(before, prepared, detection, chosen, reasons,
                          sensitivity={mlps[k].output: v for k, v in scores.items()})
    report.update({
        "fidelity": fidelity,
        "fidelity_measure": "mean cosine of the first output per token, converted vs original, held-out calibration data",
        "fidelity_floor": fidelity_floor if selection == "auto" else None,
        "layers": layers,
        "calibration": "synthetic (random inputs from the graph's input types)" if synthetic else "given",
        "calibration_samples": int(next(iter(calib.values())).shape[0]),
        "sequential": sequential,
        "recipe": recipe.summary() if recipe is not None else None,
        "distillation": distilled,
        "seconds": round(time.monotonic() - started, 1),
        "seconds_fitting": round(fitting.seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),  # all threads: onnxruntime runs on two
        "cpu_seconds_fitting": round(fitting.cpu_seconds, 1),
    })
    return (converted if recipe is not None else _kind_of(model, prepared)), report


def _first_run(run: Callable):
    """`run()`, the first run of the user's model: onnxruntime refusing it is bad input, not a bug."""
    try:
        return run()
    except ONNXRUNTIME_ERRORS as err:
        raise BadInputError(f"onnxruntime cannot run the model: {str(err).strip().splitlines()[0]}") from err


def _with_recipe(prepared: ir.Model, chosen_mlps: list[MlpMatch], fit_runs: list[Run], config, recipe: Recipe,
                 seed: int, bar, distill_data, progress: bool, started: float
                 ) -> tuple[dict, onnx.ModelProto, dict | None]:
    """The recipe's replacements (sequential reconstruction on captured pairs), written into the model,
    then its distillation against the original: (chosen, converted proto, distillation summary)."""
    bar.total += len(chosen_mlps)
    bar.refresh()
    bar.set_postfix_str("sequential reconstruction")
    original = ir.serde.serialize_model(prepared)
    chosen = fit_sequential(original, chosen_mlps, fit_runs, lambda m: config or default_config(m.d_in, m.d_out),
                            recipe, seed=seed, on_done=lambda m: bar.update(1))
    for mlp in chosen_mlps:
        replace_with_block(prepared, mlp, chosen[mlp.output])
    converted = ir.serde.serialize_model(finish(prepared))
    if not (recipe.distill_steps and chosen):
        return chosen, converted, None
    data = distill_data if distill_data is not None else _stack(fit_runs)
    tick = time.monotonic()
    if recipe.total_seconds is not None:  # what fitting left, less the final measure and the write
        left = recipe.total_seconds - (tick - started) - FINISH_SECONDS
        recipe = dataclasses.replace(recipe, distill_seconds=max(0.0, min(left, recipe.distill_seconds or left)))
    converted, losses = distill(converted, original, data, recipe, seed=seed, progress=progress)
    return chosen, converted, {"steps": len(losses), "seconds": round(time.monotonic() - tick, 1),
                               "load_average": [round(v, 2) for v in os.getloadavg()],
                               "samples": int(next(iter(data.values())).shape[0]),
                               "budget_seconds": recipe.distill_seconds,
                               "loss_first_last": [losses[0], losses[-1]] if losses else None}


def _stack(runs: list[Run]) -> dict[str, np.ndarray]:
    """The real samples of calibration runs (slices of the same arrays) back into one array per input."""
    return {name: np.concatenate([r.feeds[name][:r.rows] for r in runs]) for name in runs[0].feeds}


class _Fitter:
    """Fits one block (the converter's `fit` with its budget share), timing and counting the fits."""

    def __init__(self, fit: Callable, config: BlockConfig | None, per_fit: float | None, seed: int, mlps) -> None:
        self.fit, self.config, self.per_fit, self.seed, self.mlps = fit, config, per_fit, seed, mlps
        self.seconds = self.cpu_seconds = 0.0
        self.bar = None

    def __call__(self, k: int, x: np.ndarray, y: np.ndarray) -> WeightlessBlockParams:
        mlp = self.mlps[k]
        for what, value in (("input", x), ("output", y)):
            if not np.isfinite(value).all():
                raise BadInputError(f"MLP {k} ({mlp.output}): its {what} is NaN or infinite on the calibration "
                                    "data (check the model's weights and the --calib inputs)")
        cfg = self.config or default_config(mlp.d_in, mlp.d_out)
        self.bar.set_postfix_str(f"MLP {k} on {len(x)} tokens")
        started, cpu = time.monotonic(), time.process_time()
        params = self.fit(x, y, config=cfg, budget_seconds=self.per_fit, seed=self.seed, progress=False)
        self.seconds += time.monotonic() - started
        self.cpu_seconds += time.process_time() - cpu
        self.bar.update(1)
        return params


class _Pass:
    """One pass of the calibration data through the stages, MLP by MLP, with up to four streams:

    - original, fitting data: each MLP's own input/output pairs for its local fit (`local`);
    - original, held-out data: the reference output, and at each MLP a fork with only that MLP's local
      block in place, run to the end (`sensitivity`);
    - converted, fitting data: from the first chosen MLP on, a fork with the chosen blocks in place;
      with `sequential`, each later chosen MLP is fitted on what this stream gives it;
    - converted, held-out data: the same blocks; its outputs give the final fidelity.

    The converted streams start as forks of the original ones where the first block goes in, so the
    original part is computed once. Chosen blocks are written into the model as soon as they are known
    (`rewrite`).
    """

    def __init__(self, stages: Stages, fit_runs, held_runs, fitter: _Fitter, *, chosen=(), sequential=True,
                 local=False, sensitivity=False, local_blocks=None, reference=None, rewrite=False) -> None:
        self.stages, self.fitter = stages, fitter
        self.fit_runs, self.held_runs = fit_runs, held_runs
        self.chosen, self.sequential, self.rewrite = set(chosen), sequential, rewrite
        self.want_local, self.want_sensitivity = local, sensitivity
        self.local: dict[int, WeightlessBlockParams] = dict(local_blocks or {})
        self.reference = reference
        self.blocks: dict[int, WeightlessBlockParams] = {}
        self.scores: dict[int, float] = {}
        self.converted: list[np.ndarray] | None = None

    def run(self) -> _Pass:
        stages = self.stages
        count = len(stages.mlps)
        first_chosen = min(self.chosen) if self.chosen else None
        refits = [k for k in sorted(self.chosen) if self.sequential and not (
            k == first_chosen and (self.want_local or k in self.local))]
        self.fitter.bar.total += (count if self.want_local else 0) + len(refits)
        self.fitter.bar.refresh()
        keep_reference = self.reference is None or self.want_sensitivity
        original_fit = Stream(stages, self.fit_runs) if self.want_local or refits else None
        original_held = Stream(stages, self.held_runs)
        converted_fit = converted_held = None
        forks: dict[int, list[np.ndarray]] = {}
        for k in range(count):
            mlp = stages.mlps[k]
            for stream in (original_fit, original_held, converted_fit, converted_held):
                if stream is not None:
                    stream.advance(k)
            if self.want_local:
                self.local[k] = self.fitter(k, original_fit.rows(mlp.input), original_fit.dense_rows(k))
            if self.want_sensitivity:
                fork = original_held.fork()
                fork.apply(k, self.local[k])
                forks[k] = fork.finish()
            if k in self.chosen:
                if converted_held is None:  # the first block goes in here: fork the original streams
                    converted_held = original_held.fork()
                    converted_fit = original_fit.fork() if refits else None
                if k in refits:
                    self.blocks[k] = self.fitter(k, converted_fit.rows(mlp.input), converted_fit.dense_rows(k))
                else:
                    self.blocks[k] = self.local[k]
                if converted_fit is not None:
                    converted_fit.apply(k, self.blocks[k])
                converted_held.apply(k, self.blocks[k])
                if self.rewrite:
                    replace_with_block(stages.model, mlp, self.blocks[k])
            else:
                for stream in (converted_fit, converted_held):
                    if stream is not None:
                        stream.apply(k)
            if original_fit is not None:  # kept while local fits or a later fork still need it
                if self.want_local or converted_held is None:
                    original_fit.apply(k)
                else:
                    original_fit = None
            if original_held is not None:
                if keep_reference or converted_held is None:
                    original_held.apply(k)
                else:
                    original_held = None
            if self.rewrite:  # the last pass: no stream comes back to these steps
                stages.release(k)
        if self.reference is None:
            self.reference = original_held.finish()
        self.converted = converted_held.finish() if converted_held is not None else self.reference
        self.scores = {k: calibrate.fidelity(self.reference, out) for k, out in forks.items()}
        return self


def _auto_select(stages: Stages, held_out, first: _Pass, floor: float) -> list[int]:
    """MLPs in order of least fidelity lost alone, added while the model with all of them stays >= floor."""
    chosen: list[int] = []
    for k in sorted(first.scores, key=lambda k: -first.scores[k]):
        trial = chosen + [k]
        stream = Stream(stages, held_out)
        for j in range(len(stages.mlps)):
            stream.apply(j, first.local[j] if j in trial else None)
        if calibrate.fidelity(first.reference, stream.finish()) < floor:
            break
        chosen = trial
    return chosen


def _kind_of(given, prepared: ir.Model):
    """The converted model in the form the caller gave: onnx-ir stays onnx-ir, a proto gets a proto."""
    return prepared if isinstance(given, ir.Model) else ir.serde.serialize_model(prepared)


def build_report(before: dict, converted: ir.Model, detection: Detection, chosen: dict, reasons: dict, *,
                 sensitivity=None) -> dict:
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
        **costs.totals(before, converted, [as_replacement(v).block for v in chosen.values()]),
        "bypass_macs": sum(r.bypass.macs for r in map(as_replacement, chosen.values()) if r.bypass is not None),
        "mlps": rows,
        "not_matched": [{"node": w, "reason": r} for w, r in detection.rejected],
    }
