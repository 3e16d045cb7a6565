"""`quweit-compile`'s pipeline: ONNX blocks -> (TVM Relax BYOC -> C library) and (RTL straight from the
ONNX blocks -> testbenches on real and random vectors -> optional simulation, synthesis and the hardware
cost report) -> report.json.

Everything is built in a temporary folder beside OUTDIR and moved into place at the end
(`onnxio.atomic_output`), so a failure leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from quweit.custom_ops import WeightlessBlockError, WeightlessBlockParams, quantize_inputs, read_blocks
from quweit.onnxio import atomic_output, load_model, signals_deferred
from tqdm import tqdm

from .design import rtl_blocks
from .errors import HwBackendError
from .limits import check_rtl_supported
from .rtl import RtlBlock
from .rtl_files import simulate_block, write_rtl, write_testbench
from .simulate import SimResult, require_simulator
from .synth import yosys_command
from .vectors import random_inputs

TARGETS = ("c", "verilog", "all")
LIBRARY = "model.so"
VERILOG_DIR = "verilog"
REPORT = "report.json"
#: Most real-activation vectors per block (tokens beyond it are not simulated, to bound run time).
REAL_VECTOR_LIMIT = 4096
#: Synthetic model inputs when no --inputs are given: samples x sequence length (free axes).
SYNTHETIC_SAMPLES, SYNTHETIC_LENGTH = 2, 64


@dataclasses.dataclass
class CompileOptions:
    model: Path
    outdir: Path
    target: str = "all"
    verify: bool = False
    simulator: str = "icarus"
    pipeline: bool = False
    random_vectors: int = 1000
    inputs: Path | None = None
    seed: int = 0
    force: bool = False
    synth: bool = False
    report: bool = False
    mlp_hidden: int | None = None
    pnr_max_luts: int | None = None
    progress: bool = True
    argv: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class BlockReport:
    node: str
    rtl: RtlBlock
    real_vectors: int = 0
    random_vectors: int = 0
    simulation: SimResult | None = None
    synthesis: dict | None = None
    real_q: np.ndarray | None = None
    cost: object | None = None  # cost.BlockSynthesis, with --synth or --report

    @property
    def params(self) -> WeightlessBlockParams:
        return self.rtl.params

    def as_json(self) -> dict:
        p = self.params
        sim = self.simulation
        return {
            "node": self.node, "module": self.rtl.name, **p.attributes(),
            "luts": int(sum(p.layer_sizes)), "thermometer_bits": p.in_features * p.thresholds_per_feature,
            "latency_cycles": self.rtl.latency, "real_vectors": self.real_vectors,
            "random_vectors": self.random_vectors,
            "simulation": None if sim is None else {
                "simulator": sim.simulator, "vectors": sim.vectors, "mismatches": sim.mismatch_count,
                "passed": sim.passed, "first_mismatches": [dataclasses.asdict(m) for m in sim.mismatches[:10]],
            },
            "synthesis": self.synthesis,
        }


def load_blocks(path: Path) -> tuple[onnx.ModelProto, list[WeightlessBlockParams]]:
    """Read (with the I/O layer's checks) and validate the model; a model without blocks or with an invalid
    block is bad input."""
    model = load_model(path)
    try:
        blocks = read_blocks(model)
    except WeightlessBlockError as err:
        raise HwBackendError(f"{path}: {err}") from err
    if not blocks:
        raise HwBackendError(f"model '{path}' holds no quweit::WeightlessBlock node; convert it first (quweit-convert)")
    return model, blocks


def check_options(opts: CompileOptions, blocks: list[WeightlessBlockParams]) -> None:
    """Every check that can fail before any work: target, output folder, simulator, tools, RTL limits."""
    if opts.target not in TARGETS:
        raise HwBackendError(f"--target must be one of {', '.join(TARGETS)}, got '{opts.target}'")
    if opts.random_vectors < 0:
        raise HwBackendError(f"--vectors must be >= 0, got {opts.random_vectors}")
    if opts.mlp_hidden is not None and opts.mlp_hidden < 1:
        raise HwBackendError(f"--mlp-hidden must be >= 1, got {opts.mlp_hidden}")
    if opts.outdir.exists() and (not opts.outdir.is_dir() or any(opts.outdir.iterdir())) and not opts.force:
        raise HwBackendError(f"output folder '{opts.outdir}' exists and is not empty; pass --force to replace it")
    if opts.target in ("verilog", "all"):
        for params in blocks:
            check_rtl_supported(params, params.node or "?")
        if opts.verify or opts.report:
            require_simulator(opts.simulator)
        if opts.synth or opts.report:
            yosys_command()
        if opts.report:
            from .timing import nextpnr_command

            nextpnr_command()
    elif opts.verify or opts.synth or opts.report:
        raise HwBackendError("--verify, --synth and --report need the Verilog; use --target verilog or all")


def blocks_only_model(blocks: list[WeightlessBlockParams]) -> onnx.ModelProto:
    """All blocks side by side (input `X<k>` -> output `Y<k>`, rows of D_in): what TVM compiles when its
    ONNX importer cannot convert the rest of the model."""
    from onnx import TensorProto, helper
    from quweit.custom_ops import attach_decomposition, make_block_node

    nodes, inits, inputs, outputs = [], [], [], []
    for k, params in enumerate(blocks):
        node, tensors = make_block_node(params, f"X{k}", f"Y{k}", prefix=f"b{k}.", name=params.node or f"block_{k}")
        nodes.append(node)
        inits += tensors
        inputs.append(helper.make_tensor_value_info(f"X{k}", TensorProto.FLOAT, [f"rows{k}", params.in_features]))
        outputs.append(helper.make_tensor_value_info(f"Y{k}", TensorProto.FLOAT, [f"rows{k}", params.out_features]))
    graph = helper.make_graph(nodes, "quweit_blocks", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return attach_decomposition(model)


def import_model(model: onnx.ModelProto, blocks: list[WeightlessBlockParams]):
    """(Relax module, scope, reason): the whole model, or only its blocks when TVM's importer fails on
    another op (TVM 0.27 cannot import some transformer exports; the blocks never depend on that)."""
    from .frontend import from_onnx

    try:
        return from_onnx(model), "model", None
    except WeightlessBlockError as err:
        raise HwBackendError(str(err)) from err
    except Exception as err:  # noqa: BLE001  (TVM's importer raises many unrelated types for unsupported graphs)
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        return from_onnx(blocks_only_model(blocks)), "blocks", reason


def build_tvm(model: onnx.ModelProto, blocks, workdir: Path) -> dict:
    """Import, partition, run the codegen (C per block) and export the TVM library.

    TVM calls back into Python (the frontend's TE, the codegen) and its FFI turns an exception raised
    there - KeyboardInterrupt included - into a RuntimeError: Ctrl-C and SIGTERM are therefore held back
    until TVM returns, and then unwind as usual."""
    import tvm
    from tvm import relax

    from .patterns import partition_for_quweit

    with signals_deferred():
        mod, scope, reason = import_model(model, blocks)
        mod = relax.transform.RunCodegen()(partition_for_quweit(mod))
        tvm.compile(mod, target="llvm").export_library(str(workdir / LIBRARY))
    return {"scope": scope, "import_failure": reason}


def block_vectors(model, blocks, opts: CompileOptions, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per block: (q of real activations from an onnxruntime run of the model, at most
    REAL_VECTOR_LIMIT rows; random q vectors)."""
    activations = block_inputs(model, opts)
    return [
        (quantize_inputs(params, x[:REAL_VECTOR_LIMIT]), random_inputs(params, opts.random_vectors, rng))
        for params, x in zip(blocks, activations)
    ]


def model_inputs(model: onnx.ModelProto, opts: CompileOptions) -> dict[str, np.ndarray]:
    """The model inputs the real activations come from: `--inputs`, or the synthetic-input policy's."""
    from quweit.onnxio import load_inputs, synthetic_inputs

    if opts.inputs is not None:
        return load_inputs(opts.inputs, model, f"--inputs {opts.inputs}")
    return synthetic_inputs(model, samples=SYNTHETIC_SAMPLES, length=SYNTHETIC_LENGTH, seed=opts.seed)


def block_inputs(model: onnx.ModelProto, opts: CompileOptions) -> list[np.ndarray]:
    """Each block's input X as float32 rows (blocks in graph order), captured in onnxruntime through the
    op's decomposition (no kernel library needed) on `--inputs` or the synthetic-input policy's inputs,
    in runs that the model's declared input shapes accept."""
    from quweit.custom_ops import attach_decomposition, block_nodes
    from quweit.onnxio import capture, runs

    arrays = model_inputs(model, opts)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    attach_decomposition(probe)
    names = [node.input[0] for node in block_nodes(probe)]
    samples = len(next(iter(arrays.values())))
    try:
        values = capture(probe, runs(probe, arrays, samples), list(dict.fromkeys(names)), kernel=False)
    except Exception as err:  # onnxruntime raises several unrelated types; report them all the same way
        raise HwBackendError(f"capturing block inputs in onnxruntime failed: {err}") from err
    return [values[name] for name in names]


def compile_model(opts: CompileOptions, *, log=print) -> tuple[dict, list[BlockReport]]:
    """Run the whole pipeline; returns (report, blocks). Raises HwBackendError on bad input."""
    started = time.time()
    model, blocks = load_blocks(opts.model)
    check_options(opts, blocks)
    rng = np.random.default_rng(opts.seed)
    empty = opts.outdir.is_dir() and not any(opts.outdir.iterdir())
    with atomic_output(opts.outdir, force=opts.force or empty) as workdir:
        workdir.mkdir(mode=0o755)
        library = {"scope": None, "import_failure": None}
        if opts.target in ("c", "all"):
            log(f"quweit-compile: {len(blocks)} block(s) in {opts.model}; building the library with TVM ...")
            library = build_tvm(model, blocks, workdir)
            if library["scope"] == "blocks":
                log(f"note: TVM could not import the whole model ({library['import_failure']}); "
                    "the library holds the blocks only")
        designs = rtl_blocks(blocks, pipeline=opts.pipeline)
        reports = [BlockReport(node=node, rtl=rtl) for node, rtl in designs.items()]
        hardware = None
        if opts.target in ("verilog", "all"):
            verilog_dir = workdir / VERILOG_DIR
            write_rtl(list(designs.values()), verilog_dir)
            write_benches(model, blocks, reports, verilog_dir, opts, rng)
            if opts.synth or opts.report:
                from .cost import synthesize_blocks

                for report, summary in zip(reports, synthesize_blocks([r.rtl for r in reports], progress=opts.progress)):
                    report.synthesis = summary.as_json()
                    report.cost = summary
            if opts.report:
                from .hwreport import hardware_report

                hardware = hardware_report(model, reports, workdir, opts)
        report = make_report(opts, reports, time.time() - started)
        report["library_scope"] = library["scope"]
        report["tvm_import_failure"] = library["import_failure"]
        if hardware is not None:
            report["hardware"] = hardware
        (workdir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report, reports


def write_benches(model, blocks, reports, verilog_dir: Path, opts: CompileOptions, rng) -> None:
    """Testbench and vector files per block; simulate (--verify) each."""
    vectors = block_vectors(model, blocks, opts, rng)
    for report, (real, random) in zip(reports, vectors):
        report.real_vectors, report.random_vectors, report.real_q = len(real), len(random), real
        write_testbench(report.rtl, np.concatenate([real, random]), verilog_dir)
    if opts.verify:
        def run(report: BlockReport) -> None:
            report.simulation = simulate_block(report.rtl, verilog_dir, simulator=opts.simulator)

        # one simulator process per core; each block's testbench is independent
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.map(run, reports), total=len(reports), desc=f"simulating ({opts.simulator})",
                          unit="block", disable=not opts.progress):
                pass


def make_report(opts: CompileOptions, reports: list[BlockReport], seconds: float) -> dict:
    verified = [r.simulation for r in reports if r.simulation is not None]
    return {
        "model": str(opts.model), "target": opts.target, "pipeline": opts.pipeline,
        "library": LIBRARY if opts.target in ("c", "all") else None,
        "verilog": VERILOG_DIR if opts.target in ("verilog", "all") else None,
        "dequantization": "software: Y = float32(acc) * output_scale (the RTL outputs int32 accumulators)",
        "verified": bool(verified) and all(s.passed for s in verified) if opts.verify else None,
        "seconds": round(seconds, 1),
        "blocks": [r.as_json() for r in reports],
    }
