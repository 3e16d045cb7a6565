"""`quweit-compile --report`: what the blocks cost in hardware against the dense int8 MLPs they replaced.

Per block: model LUTs, mapped LUTs (xc7) and LUT6 per model LUT split into encoder / LUT layers / sum,
flip-flops, Fmax (ECP5 place and route) or logic levels, generic gates and sky130 area, a gate-level
simulation of the synthesized netlist (bit-exact against the reference, Icarus), toggles and energy per
token on the model's real activations; the same for the dense baseline (baseline.py), and the ratios.
Whole model: the dense parts (attention, projections) at the baseline's energy per MAC on both sides.
Writes hardware.json, hardware.txt (the table) and hardware.png (LUTs per stage; energy per token).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .activity import block_activity
from .baseline import mlp_baseline
from .energy import PJ, calibration
from .errors import HwBackendError
from .model_cost import dense_macs
from .rtl_files import simulate_gate_level
from .timing import DEFAULT_MAX_LUTS, block_timing

JSON_FILE, TABLE_FILE, PLOT_FILE = "hardware.json", "hardware.txt", "hardware.png"


def block_entry(report, opts, verilog_dir: Path, cal: dict, max_luts: int) -> dict:
    cost, rtl = report.cost, report.rtl
    p = rtl.params
    synth = cost.as_json()
    gate_sim = simulate_gate_level(rtl, [r.netlist / "gates.v" for _, _, r in cost.modules], verilog_dir,
                                   simulator=opts.simulator)
    q = report.real_q if report.real_q is not None and len(report.real_q) > 1 else None
    if q is None:
        raise HwBackendError(f"block '{report.node}': no real activations to count toggles on")
    activity = block_activity(cost, q)
    if activity.mismatches:
        raise HwBackendError(f"block '{report.node}': the synthesized netlist differs from the reference on "
                             f"{activity.mismatches} chunk outputs (synthesis changed the function)")
    timing = block_timing(rtl, synth["lut"], synth["logic_levels"], max_luts=max_luts)
    x = q.astype(np.float64) / p.input_scale.astype(np.float64)  # the activations the block saw
    hidden = opts.mlp_hidden or 4 * p.in_features
    dense = mlp_baseline(x, p.in_features, hidden, p.out_features)
    core_pj = activity.toggles_per_token * cal["pj_per_toggle"]
    scale_pj = (p.in_features + p.out_features) * dense["pj_per_mac_measured"]
    block_pj = core_pj + scale_pj
    return {
        "node": report.node, "module": rtl.name, "model_luts": synth["model_luts"], "xc7": synth,
        "lut6_per_model_lut": synth["lut6_per_model_lut"], "ff": synth["ff"], "timing": timing,
        "gates": synth["gates"], "sky130_area_um2": synth["sky130_area_um2"],
        "gate_level_simulation": {"simulator": gate_sim.simulator, "vectors": gate_sim.vectors,
                                  "mismatches": gate_sim.mismatch_count, "passed": gate_sim.passed},
        "activity": {"tokens": activity.vectors, "toggles_per_token": activity.toggles_per_token,
                     "toggles_per_stage": {k: v / (activity.vectors - 1) for k, v in activity.toggles.items()},
                     "gate_toggles": activity.gate_toggles},
        "energy_pj_per_token": {"core": core_pj, "scales": scale_pj, "total": block_pj},
        "baseline": dense,
        "block_energy_ratio": dense["pj_per_token"] / block_pj,
        "block_energy_ratio_analytic": dense["pj_per_token_analytic"] / block_pj,
    }


def hardware_report(model, reports, workdir: Path, opts) -> dict:
    started = time.time()
    cal = calibration()
    max_luts = opts.pnr_max_luts or DEFAULT_MAX_LUTS
    verilog_dir = workdir / "verilog"
    blocks = []
    from tqdm.auto import tqdm

    for report in tqdm(reports, desc="gate-level simulation, toggles, timing, baseline", unit="block",
                       disable=not opts.progress):
        blocks.append(block_entry(report, opts, verilog_dir, cal, max_luts))
    from .compile import model_inputs

    feeds = model_inputs(model, opts)
    dense = dense_macs(model, feeds)
    per_mac = float(np.mean([b["baseline"]["pj_per_mac_measured"] for b in blocks]))
    rest_pj = dense["weight_macs_per_token"] * (per_mac + PJ["sram_8kb_read_64b"] / 8) \
        + dense["activation_macs_per_token"] * per_mac
    mlp_pj = sum(b["baseline"]["pj_per_token"] for b in blocks)
    block_pj = sum(b["energy_pj_per_token"]["total"] for b in blocks)
    model_luts = sum(b["model_luts"] for b in blocks)
    luts = sum(b["xc7"]["lut"] for b in blocks)
    split = {k: sum(b["xc7"]["lut_split"][k] for b in blocks) / model_luts for k in ("encoder", "layers", "sum")}
    out = {
        "lut6_per_model_lut": luts / model_luts,
        "lut6_per_model_lut_split": split,
        "block_energy_ratio": mlp_pj / block_pj,
        "model_energy_ratio": (rest_pj + mlp_pj) / (rest_pj + block_pj),
        "totals": {
            "model_luts": model_luts, "xc7_luts": luts, "ff": sum(b["ff"] for b in blocks),
            "sky130_area_um2": round(sum(b["sky130_area_um2"] for b in blocks), 1),
            "block_pj_per_token": block_pj, "baseline_mlp_pj_per_token": mlp_pj,
            "dense_rest_pj_per_token": rest_pj, "dense_rest": dense,
            "model_pj_per_token": rest_pj + block_pj, "baseline_model_pj_per_token": rest_pj + mlp_pj,
        },
        "energy_model": {**cal, "dense_rest": "weight MACs at the baseline's measured pJ/MAC plus one 8 KB SRAM "
                         "read per 8 int8 weights; activation MACs (attention scores) at the measured pJ/MAC; "
                         "elementwise ops left out on both sides",
                         "block": "toggles per token of the gate netlists on real activations x pJ/toggle, plus "
                                  "the block's D_in + D_out scale multiplications at the baseline's pJ/MAC"},
        "blocks": blocks,
        "run": {"command": "quweit-compile " + " ".join(opts.argv),
                "seed": opts.seed, "seconds": round(time.time() - started, 1), "load_average": os.getloadavg(),
                "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()},
    }
    (workdir / JSON_FILE).write_text(json.dumps(out, indent=1) + "\n")
    (workdir / TABLE_FILE).write_text(table(out) + "\n")
    plot(out, workdir / PLOT_FILE)
    return {"json": JSON_FILE, "table": TABLE_FILE, "plot": PLOT_FILE,
            **{k: out[k] for k in ("lut6_per_model_lut", "block_energy_ratio", "model_energy_ratio")}}


def table(out: dict) -> str:
    header = ("block", "model LUT", "xc7 LUT", "LUT6/mLUT", "enc/lay/sum", "FF", "Fmax MHz", "levels", "area mm2",
              "toggles/tok", "block pJ/tok", "MAC pJ/tok", "ratio", "gate sim")
    rows = []
    for b in out["blocks"]:
        s = b["xc7"]["lut6_per_model_lut_split"]
        fmax = b["timing"]["fmax_mhz"]
        sim = b["gate_level_simulation"]
        rows.append((b["node"], b["model_luts"], b["xc7"]["lut"], f"{b['lut6_per_model_lut']:.2f}",
                     f"{s['encoder']:.2f}/{s['layers']:.2f}/{s['sum']:.2f}", b["ff"],
                     f"{fmax:.0f}" if fmax else "-", b["timing"]["logic_levels"], f"{b['sky130_area_um2'] / 1e6:.3f}",
                     f"{b['activity']['toggles_per_token']:.0f}", f"{b['energy_pj_per_token']['total']:.1f}",
                     f"{b['baseline']['pj_per_token']:.0f}", f"{b['block_energy_ratio']:.0f}x",
                     "pass" if sim["passed"] else f"FAIL {sim['mismatches']}"))
    t = out["totals"]
    split = out["lut6_per_model_lut_split"]
    rows.append(("total", t["model_luts"], t["xc7_luts"], f"{out['lut6_per_model_lut']:.2f}",
                 f"{split['encoder']:.2f}/{split['layers']:.2f}/{split['sum']:.2f}", t["ff"], "", "",
                 f"{t['sky130_area_um2'] / 1e6:.3f}", "", f"{t['block_pj_per_token']:.1f}",
                 f"{t['baseline_mlp_pj_per_token']:.0f}", f"{out['block_energy_ratio']:.0f}x", ""))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"whole model per token: {t['model_pj_per_token'] / 1e3:.1f} nJ vs {t['baseline_model_pj_per_token'] / 1e3:.1f} nJ "
                 f"with dense int8 MLPs: model_energy_ratio {out['model_energy_ratio']:.2f}x "
                 f"(dense rest {t['dense_rest_pj_per_token'] / 1e3:.1f} nJ on both sides)")
    cal = out["energy_model"]
    lines.append(f"energy: {cal['pj_per_toggle'] * 1e3:.2f} fJ per gate toggle, calibrated to {cal['source']}; "
                 "SRAM read 10 pJ per 64 bits (8 KB)")
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [b["node"].split("/")[-1][:18] or b["module"] for b in out["blocks"]]
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = np.zeros(len(names))
    for stage, color in (("encoder", "#4c72b0"), ("layers", "#55a868"), ("sum", "#c44e52")):
        values = np.array([b["xc7"]["lut6_per_model_lut_split"][stage] for b in out["blocks"]])
        left.bar(x, values, bottom=bottom, label=stage, color=color)
        bottom += values
    left.axhline(2.5, color="k", ls="--", lw=1, label="target 2.5")
    left.set_xticks(x, names, rotation=30, ha="right")
    left.set_ylabel("xc7 LUTs per model LUT")
    left.set_title("mapped LUTs per stage")
    left.legend()
    width = 0.38
    right.bar(x - width / 2, [b["baseline"]["pj_per_token"] for b in out["blocks"]], width, label="dense int8 MLP",
              color="#8c8c8c")
    right.bar(x + width / 2, [b["energy_pj_per_token"]["total"] for b in out["blocks"]], width, label="LUT block",
              color="#55a868")
    right.set_yscale("log")
    right.set_xticks(x, names, rotation=30, ha="right")
    right.set_ylabel("energy per token (pJ)")
    right.set_title(f"energy per token: blocks {out['block_energy_ratio']:.0f}x, model {out['model_energy_ratio']:.2f}x")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
