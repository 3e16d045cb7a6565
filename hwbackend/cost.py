"""A block's hardware cost from the synthesis of its modules (synth.py): counts per stage (thermometer
encoder, each LUT layer, summation), logic levels, flip-flops, generic gates and sky130 area."""

from __future__ import annotations

import dataclasses

from .rtl import RtlBlock, render_lut
from .synth import GATES, ModuleSynthesis, synthesize_all, yosys_version

#: Stages in report order; "layers" groups every LUT layer.
SPLIT = ("encoder", "layers", "sum")


def _split(stage: str) -> str:
    return "encoder" if stage == "thermometer" else "sum" if stage == "sum" else "layers"


@dataclasses.dataclass
class BlockSynthesis:
    rtl: RtlBlock
    modules: list[tuple[str, str, ModuleSynthesis]]  # (module, stage, result)

    @property
    def model_luts(self) -> int:
        return int(sum(self.rtl.params.layer_sizes))

    def stages(self) -> dict[str, dict]:
        """Per stage: summed FPGA cells, gates and area; the deepest chunk's logic levels."""
        out: dict[str, dict] = {}
        for _, stage, result in self.modules:
            entry = out.setdefault(stage, {"modules": 0, "levels": 0, "gates": 0, "area_um2": 0.0})
            entry["modules"] += 1
            entry["levels"] = max(entry["levels"], result.levels)
            entry["gates"] += sum(result.gates.values())
            entry["area_um2"] += result.area_um2
            for key, value in result.fpga.items():
                entry[key] = entry.get(key, 0) + value
        return out

    def flip_flops(self) -> int:
        """Pipeline registers (exact, from the generated RTL): one per live bit, the sums' own widths."""
        if not self.rtl.pipeline:
            return 0
        s = self.rtl.structure
        sums = sum(out["top"].width for out in s["outputs"])
        return len(s["comparators"]) + sum(int(live.sum()) for live in s["live"]) + sums

    def critical_levels(self) -> int:
        """Logic levels of the longest register-to-register path: the sum of the stages' levels
        (combinational), or the deepest stage (pipelined)."""
        levels = [v["levels"] for v in self.stages().values()]
        return max(levels, default=0) if self.rtl.pipeline else sum(levels)

    def as_json(self) -> dict:
        stages = self.stages()
        luts = sum(v["lut"] for v in stages.values())
        split = {name: 0 for name in SPLIT}
        for stage, v in stages.items():
            split[_split(stage)] += v["lut"]
        totals = {key: sum(v.get(key, 0) for v in stages.values())
                  for key in ("lut1", "lut2", "lut3", "lut4", "lut5", "lut6", "lut", "carry4", "muxf", "dsp")}
        return {
            "tool": f"{yosys_version()}: synth_xilinx -family xc7 -flatten per module; abc -g {GATES}; sky130 area",
            **totals, "ff": self.flip_flops(), "model_luts": self.model_luts,
            "lut6_per_model_lut": luts / self.model_luts,
            "lut6_per_model_lut_split": {k: v / self.model_luts for k, v in split.items()},
            "lut_split": split,
            "logic_levels": self.critical_levels(),
            "gates": sum(v["gates"] for v in stages.values()),
            "sky130_area_um2": round(sum(v["area_um2"] for v in stages.values()), 2),
            "stages": stages,
        }


def synthesis_jobs(rtl: RtlBlock) -> list[tuple[str, str, str]]:
    """(module, stage, Verilog text) of every module to synthesize (the wiring-only block module is not)."""
    lut = render_lut()
    return [(m.name, m.stage, m.text + (lut if m.stage.startswith("layer") else ""))
            for m in rtl.modules() if m.stage != "block"]


def synthesize_blocks(rtls: list[RtlBlock], *, progress: bool = True) -> list[BlockSynthesis]:
    """Every module of every block in one parallel pool (cached results return at once)."""
    jobs = [(rtl, job) for rtl in rtls for job in synthesis_jobs(rtl)]
    results = synthesize_all([(module, text) for _, (module, _, text) in jobs], progress=progress,
                             desc=f"synthesizing {len(rtls)} block(s) (yosys)")
    out = {id(rtl): BlockSynthesis(rtl, []) for rtl in rtls}
    for (rtl, (module, stage, _)), result in zip(jobs, results):
        out[id(rtl)].modules.append((module, stage, result))
    return [out[id(rtl)] for rtl in rtls]
