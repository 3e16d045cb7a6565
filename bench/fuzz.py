"""Fuzzing quweit with mutated real models: commands, kernel (ASan + UBSan) and decomposition.

    python bench/fuzz.py --cases 10000 --seed S --json bench/results/fuzz.json [--jobs 2] [--small]

Each case draws a seed model (real exports, what quweit makes of them, single blocks: fuzz_corpus.py)
and one mutation (structure-aware, WeightlessBlock parameters invalid in a field of spec section 5,
bytes, or a valid variation: fuzz_mutate.py), deterministically from (seed, case). It is fed to
`quweit-convert` and `quweit-compile` in-process (every `--cli-every`-th case also through the installed
commands), to the onnxruntime kernel built with -fsanitize=address,undefined and to the op's
decomposition in stock onnxruntime (fuzz_targets.py). Counted: crashes (signals, sanitizer reports),
tracebacks, hangs (a target running longer than --hang-seconds), exit codes other than documented
(0; 2 bad input; 3 no MLP), outputs left behind after a failure (and temporary files after anything),
inputs modified, and any difference from the reference on an accepted model. Prints a table and writes
JSON with `cases`, `crashes`, `tracebacks`, `hangs`, `partial_outputs`, `mismatches` (and details).
`--case N` reruns one case and keeps its folder (`--keep DIR`) for inspection.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import finish, refuse_to_clobber  # noqa: E402
from fuzz_corpus import build_corpus  # noqa: E402
from fuzz_mutate import make_case  # noqa: E402
from fuzz_targets import TRACEBACK, compile_argv, convert_argv  # noqa: E402

COUNTS = ("crashes", "tracebacks", "hangs", "bad_exit_codes", "partial_outputs", "inputs_modified", "mismatches")
#: Exit codes each command documents (compile's 1 "verification failed" is a mismatch, counted as such).
DOCUMENTED = {"convert": {0, 2, 3}, "compile": {0, 2}, "runtime": {0, 2}}
TARGET_NAMES = {"convert": "quweit-convert", "compile": "quweit-compile", "runtime": "kernel+decomposition"}
SANITIZER_TEXT = ("AddressSanitizer", "UndefinedBehaviorSanitizer", "LeakSanitizer", "runtime error:")
#: Start-up allowance of a command run as a process (Python, onnxruntime, TVM imports) on top of the hang limit.
CLI_STARTUP_SECONDS = 30.0
MAX_DETAILS = 50


class Worker:
    """A long-lived `fuzz_targets.py` process; results come back on a pipe, its output goes to a log."""

    def __init__(self, kind: str, env: dict, log: Path) -> None:
        self.kind, self.env, self.log = kind, env, log
        self.proc: subprocess.Popen | None = None
        self.buffer = b""
        self.log_offset = 0

    def start(self) -> None:
        read, write = os.pipe()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_targets.py"), self.kind, str(write)],
                                         stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(write,),
                                         env=self.env, cwd=str(HERE), start_new_session=True)
        os.close(write)
        self.reader = os.fdopen(read, "rb", buffering=0)
        self.buffer = b""
        self.log_offset = self.log.stat().st_size
        line = self._line(600.0)
        if line is None or "ready" not in line:
            raise RuntimeError(f"fuzz worker {self.kind} did not start: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started (simulators)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc.stdin.close()
            self.reader.close()
            self.proc = None

    def log_tail(self) -> str:
        data = self.log.read_bytes()[self.log_offset:] if self.log.exists() else b""
        return data.decode(errors="replace")[-2000:]

    def _line(self, timeout: float) -> dict | None:
        """The next result line, or None when `timeout` passes or the worker dies."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.reader, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = self.reader.read(65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, job: dict, hang_seconds: float) -> dict[str, dict]:
        """Each target's result; a hang or a crash ends the worker (restarted for the next job)."""
        if self.proc is None:
            self.start()
        self.log_offset = self.log.stat().st_size
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        results: dict[str, dict] = {}
        while True:
            line = self._line(hang_seconds)
            if line is None:  # silence for longer than the hang limit, or the worker died
                died = self.proc.poll() is not None
                code, tail = self.proc.returncode, self.log_tail()
                self.stop()
                victim = next(t for t in job["targets"] if t not in results)
                last = tail.strip().splitlines()[-1][:300] if tail.strip() else ""
                results[victim] = {"crash": True, "code": code, "message": last} if died else {
                    "hang": True, "code": None, "message": f"no result within {hang_seconds:.0f} s"}
                return results
            if "target" in line:
                sanitizer = self._sanitizer_report()
                if sanitizer:
                    line.update(crash=True, message=sanitizer)
                results[line["target"]] = line
            elif line.get("done"):
                return results

    def _sanitizer_report(self) -> str | None:
        data = self.log.read_bytes()[self.log_offset:].decode(errors="replace")
        self.log_offset += len(data.encode())
        for text in SANITIZER_TEXT:
            if text in data:
                at = data.index(text)
                return data[max(0, at - 100):at + 400]
        return None


@dataclasses.dataclass
class Tally:
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    no_mlp: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    counts: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(COUNTS, 0))


class Fuzzer:
    def __init__(self, args, corpus: Path, seeds, workdir: Path, library: Path) -> None:
        self.args, self.corpus, self.seeds, self.workdir = args, corpus, seeds, workdir
        self.lock = threading.Lock()
        self.tallies: dict[str, Tally] = {}
        self.families: dict[str, int] = {}
        self.by_seed: dict[str, dict] = {}
        self.details: list[dict] = []
        from quweit.runtime.native_build import SANITIZER_ENV, sanitizer_preload

        base = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
        self.py_env = base
        self.runtime_env = dict(base, LD_PRELOAD=sanitizer_preload(), QUWEIT_ORT_LIBRARY=str(library), **SANITIZER_ENV)

    def slot(self, k: int) -> tuple[Worker, Worker]:
        return (Worker("py", self.py_env, self.workdir / f"worker{k}.py.log"),
                Worker("runtime", self.runtime_env, self.workdir / f"worker{k}.runtime.log"))

    def run_case(self, index: int, workers: tuple[Worker, Worker]) -> list[dict]:
        """Make case `index`, feed it to every target, return one record per target."""
        folder = self.workdir / f"case{index}"
        folder.mkdir()
        rng = np.random.default_rng([self.args.seed, index])
        case = make_case(index, self.seeds, self.corpus, folder, rng)
        outside = folder.parent / f"{folder.name}.outside.bin"
        inputs = _snapshot(folder)
        outs = {t: folder / f"out_{t}" for t in ("convert", "compile", "convert_cli", "compile_cli")}
        for out in outs.values():
            out.mkdir()
        job = {"model": str(case.model), "calib": str(case.calib), "seed_kind": self._seed(case.seed).kind,
               "width": case.width, "out": {k: str(v) for k, v in outs.items()},
               "verify": index % self.args.verify_every == 0}
        results = workers[0].run({**job, "targets": ["convert", "compile"]}, self.args.hang_seconds)
        results.update(workers[1].run({**job, "targets": ["runtime"]}, self.args.hang_seconds))
        if index % self.args.cli_every == 0:
            for target, argv_of in (("convert", convert_argv), ("compile", compile_argv)):
                results[f"{target}_cli"] = self._cli(target, argv_of(job, outs[f"{target}_cli"]))
        records = []
        for target in ("convert", "compile", "runtime", "convert_cli", "compile_cli"):
            if target not in results:
                continue
            result = results[target]
            kind = target.removesuffix("_cli")
            record = {"case": index, "target": target, "seed": case.seed, "family": case.family,
                      "mutation": case.mutation, "code": result.get("code"), "message": result.get("message", ""),
                      "seconds": result.get("seconds", 0.0), "cpu": result.get("cpu", 0.0)}
            record["findings"] = self._findings(kind, result, outs.get(target))
            records.append(record)
        changed = _snapshot(folder, only=inputs) != inputs
        killed = {t for t, r in results.items() if r.get("hang") or r.get("crash")}
        leftovers = _leftovers(folder, inputs, {k: v for k, v in outs.items() if k not in killed})
        if changed or leftovers:
            records.append({"case": index, "target": "files", "seed": case.seed, "family": case.family,
                            "mutation": case.mutation, "code": None, "message": "; ".join(leftovers)[:300],
                            "findings": (["inputs_modified"] if changed else []) + (["partial_outputs"] if leftovers else [])})
        keep = self.args.keep and any(r["findings"] for r in records)
        if keep:
            shutil.copytree(folder, Path(self.args.keep) / folder.name, dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(folder, ignore_errors=True)
        outside.unlink(missing_ok=True)
        return records

    def _seed(self, name: str):
        return next(s for s in self.seeds if s.name == name)

    def _findings(self, kind: str, result: dict, out: Path | None) -> list[str]:
        found = []
        if result.get("crash"):
            found.append("crashes")
        if result.get("hang"):
            found.append("hangs")
        if result.get("traceback"):
            found.append("tracebacks")
        code = result.get("code")
        if not (result.get("crash") or result.get("hang")) and code not in DOCUMENTED[kind]:
            found.append("bad_exit_codes")
        if result.get("mismatch"):
            found.append("mismatches")
            result["message"] = result["mismatch"]
        if out is not None and code not in (0, None) and any(out.iterdir()):
            found.append("partial_outputs")
        return found

    def _cli(self, target: str, argv: list[str]) -> dict:
        script = Path(sys.executable).parent / f"quweit-{target}"
        command = [str(script)] if script.exists() else [sys.executable, "-m", {
            "convert": "quweit.converter.cli", "compile": "quweit.hwbackend.cli"}[target]]
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            done = subprocess.run(command + argv, capture_output=True, text=True, env=self.py_env,
                                  timeout=self.args.hang_seconds + CLI_STARTUP_SECONDS, check=False,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            return {"hang": True, "code": None, "message": "timed out"}
        result = {"code": done.returncode, "traceback": TRACEBACK in done.stderr,
                  "seconds": round(time.perf_counter() - started, 3), "cpu": round(_cpu_since(before), 3),
                  "message": (done.stderr.strip().splitlines() or [""])[-1][:300]}
        if done.returncode < 0:
            result["crash"] = True
        if done.returncode == 1 and "verification FAILED" in done.stderr:
            result.update(code=0, mismatch="verification failed")
        return result

    def record(self, records: list[dict]) -> None:
        with self.lock:
            for r in records:
                tally = self.tallies.setdefault(r["target"], Tally())
                tally.cases += 1
                tally.accepted += r["code"] == 0
                tally.rejected += r["code"] == 2
                tally.no_mlp += r["code"] == 3
                tally.seconds += r.get("seconds", 0.0)
                tally.cpu += r.get("cpu", 0.0)
                for finding in r["findings"]:
                    tally.counts[finding] += 1
                if r["findings"] and len(self.details) < MAX_DETAILS:
                    self.details.append(r)
            family = records[0]["family"] if records else "?"
            self.families[family] = self.families.get(family, 0) + 1
            if records:
                seed = self.by_seed.setdefault(records[0]["seed"], {"cases": 0, "cpu": 0.0})
                seed["cases"] += 1
                seed["cpu"] = round(seed["cpu"] + sum(r.get("cpu", 0.0) for r in records), 3)


def _cpu_since(before) -> float:
    """CPU seconds of the child processes reaped since `before` (other threads' children included: an
    estimate, exact with --jobs 1)."""
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (now.ru_utime + now.ru_stime) - (before.ru_utime + before.ru_stime)


def _files(folder: Path) -> list[Path]:
    """Every file and symlink under `folder`, without following symlinks (a mutation may plant one
    pointing outside)."""
    found = []
    for top, dirs, files in os.walk(folder):
        found += [Path(top) / name for name in files]
        found += [Path(top) / name for name in dirs if (Path(top) / name).is_symlink()]
    return found


def _snapshot(folder: Path, only: dict | None = None) -> dict[str, str]:
    """Digest of every file in `folder` (or of the paths in `only`)."""
    paths = [folder / p for p in only] if only is not None else _files(folder)
    result = {}
    for path in paths:
        key = str(path.relative_to(folder))
        if path.is_symlink():
            result[key] = f"link:{os.readlink(path)}"
        elif not path.exists():
            result[key] = "missing"
        elif path.stat().st_size > 8 << 20:  # large seeds (MiniLM's weights): size and time show a write
            stat = path.stat()
            result[key] = f"{stat.st_size}:{stat.st_mtime_ns}"
        else:
            result[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def _leftovers(folder: Path, inputs: dict, outs: dict) -> list[str]:
    """Files that are neither inputs nor a finished command's outputs: temporary files, partial outputs."""
    found = []
    out_dirs = {f"out_{t}" for t in ("convert", "compile", "convert_cli", "compile_cli")}
    for out in outs.values():  # a hidden name is a temporary file or folder of an atomic write
        for top, dirs, files in os.walk(out):
            found += [f"temporary {Path(top, n).relative_to(folder)}" for n in dirs + files if n.startswith(".")]
    for path in _files(folder):
        rel = path.relative_to(folder)
        if rel.parts[0] not in out_dirs and str(rel) not in inputs:
            found.append(f"unexpected file {rel}")
    return found


def drive(fuzzer: Fuzzer, indices: list[int], jobs: int, progress: bool) -> None:
    from tqdm import tqdm

    pending = list(indices)
    lock = threading.Lock()
    bar = tqdm(total=len(indices), desc="fuzzing", unit="case", disable=not progress)

    def loop(k: int) -> None:
        workers = fuzzer.slot(k)
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    index = pending.pop(0)
                records = fuzzer.run_case(index, workers)
                fuzzer.record(records)
                if fuzzer.args.trace:
                    for r in records:
                        tqdm.write(f"case {index} {r['target']}: {r['seed']} {r['family']} {r['mutation']} -> "
                                   f"{r['code']} {','.join(r['findings'])} {r['message'][:150]}")
                bar.update(1)
        finally:
            for worker in workers:
                worker.stop()

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()


def table(tallies: dict[str, Tally]) -> str:
    header = ("target", "cases", "accepted", "rejected", "no MLP", "s/case", "cpu/case", *COUNTS)
    rows = []
    for target in ("convert", "compile", "convert_cli", "compile_cli", "runtime", "files"):
        if target in tallies:
            t = tallies[target]
            name = TARGET_NAMES.get(target.removesuffix("_cli"), target) + (" (CLI)" if target.endswith("_cli") else "")
            rows.append((name, t.cases, t.accepted, t.rejected, t.no_mlp, f"{t.seconds / max(1, t.cases):.2f}",
                         f"{t.cpu / max(1, t.cases):.2f}",
                         *(t.counts[c] for c in COUNTS)))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json")
    p.add_argument("--jobs", type=int, default=2, help="cases run in parallel (each with its own workers)")
    p.add_argument("--small", action="store_true", help="leave the MiniLM export out of the corpus (faster)")
    p.add_argument("--corpus", help="corpus folder to reuse (built there when missing)")
    p.add_argument("--cli-every", type=int, default=20, help="every N-th case also through the installed commands")
    p.add_argument("--verify-every", type=int, default=1,
                   help="simulate the Verilog of every N-th case that quweit-compile accepts (--verify)")
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument("--case", type=int, help="run this one case only")
    p.add_argument("--keep", help="copy the folders of cases with findings here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--show", type=int, default=20, help="cases with findings to print")
    p.add_argument("--trace", action="store_true", help="print every case and target as it ends")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.json:
        refuse_to_clobber(args.json, args.force)
    from quweit.runtime.native_build import cached_library

    started = time.monotonic()
    results = {"command": " ".join(["python", "bench/fuzz.py", *(argv if argv is not None else sys.argv[1:])]),
               "load_average_start": os.getloadavg()[0], "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="quweit-fuzz-") as tmp:
        corpus = Path(args.corpus) if args.corpus else Path(tmp) / "corpus"
        print(f"corpus: {corpus}", flush=True)
        seeds = build_corpus(corpus, small=args.small, log=lambda m: print(m, flush=True))
        library = cached_library("address,undefined")
        workdir = Path(tmp) / "cases"
        workdir.mkdir()
        fuzzer = Fuzzer(args, corpus, seeds, workdir, library)
        indices = [args.case] if args.case is not None else list(range(args.cases))
        setup = time.monotonic() - started
        drive(fuzzer, indices, max(1, min(args.jobs, len(indices))), not args.no_progress)
    totals = {c: sum(t.counts[c] for t in fuzzer.tallies.values()) for c in COUNTS}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime
    print(table(fuzzer.tallies))
    print(f"{len(indices)} cases in {time.monotonic() - started - setup:.0f} s ({setup:.0f} s setup), "
          f"{cpu:.0f} CPU-seconds in all, jobs {args.jobs}")
    for detail in fuzzer.details[: args.show]:
        print(f"  case {detail['case']} {detail['target']}: {','.join(detail['findings'])}: {detail['seed']} "
              f"{detail['family']} {detail['mutation']} -> {detail['message']}")
    results.update({
        "cases": len(indices), **totals,
        "targets": {k: {**dataclasses.asdict(t), **t.counts} for k, t in fuzzer.tallies.items()},
        "families": fuzzer.families, "seeds": fuzzer.by_seed, "details": fuzzer.details,
        "wall_seconds": round(time.monotonic() - started, 1), "setup_seconds": round(setup, 1),
        "cpu_seconds": round(cpu, 1), "seconds_per_case": round((time.monotonic() - started - setup) / len(indices), 3),
        "jobs": args.jobs, "cli_every": args.cli_every, "verify_every": args.verify_every,
        "hang_seconds": args.hang_seconds, "corpus_small": args.small,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    })
    finish(results, args.json, args.force)
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if any(outcome[c] for c in COUNTS) else 0)
