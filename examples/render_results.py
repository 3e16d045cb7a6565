"""Render the paper experiments' results into the README (table, samples) and plots, from the result files only.

    python examples/render_results.py            # rewrite the README section and the sweep plots
    python examples/render_results.py --check    # exit 1 if the README section is not what the files say

Reads `examples/results/{vision_fashion_mnist,chargpt_fortunes}[_sweep].json`; the README holds no number of
these experiments that does not come from one of them (tests/test_paper_examples.py checks the section).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "examples" / "results"
README = ROOT / "README.md"
START, END = "<!-- paper-results:start (examples/render_results.py) -->", "<!-- paper-results:end -->"
EXPERIMENTS = {  # name -> (title, how to show the metric, tolerance the issue set: (kind, amount))
    "vision_fashion_mnist": ("ViT on Fashion-MNIST", "percent", ("points", 1.0)),
    "chargpt_fortunes": ("char GPT on fortunes", "nats", ("relative", 0.05)),
}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(value: float, kind: str) -> str:
    return f"{100 * value:.2f}%" if kind == "percent" else f"{value:.4f}"


def gap(result: dict, kind: str) -> str:
    """quweit against dense, signed so that + is better."""
    sign = 1 if result["higher_is_better"] else -1
    diff = sign * (result["quweit_metric"] - result["dense_metric"])
    return f"{100 * diff:+.2f} points" if kind == "percent" else f"{100 * diff / result['dense_metric']:+.1f}%"


def target_met(result: dict, tolerance: tuple[str, float]) -> bool:
    kind, amount = tolerance
    dense, quweit = result["dense_metric"], result["quweit_metric"]
    if kind == "points":
        return quweit >= dense - amount / 100 if result["higher_is_better"] else quweit <= dense + amount / 100
    return quweit >= dense * (1 - amount) if result["higher_is_better"] else quweit <= dense * (1 + amount)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def results_table(found: dict[str, dict]) -> list[str]:
    lines = [("| experiment | metric | dense | converted | from scratch | quweit vs dense | target | MLPs replaced | "
              "multiplications removed | parameters | run |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in found.items():
        title, kind, tolerance = EXPERIMENTS[name]
        key = "test_accuracy" if kind == "percent" else "test_loss"
        machine = result["machine"]
        lines.append(
            f"| {title} | {result['metric_name']} | {fmt(result['dense_metric'], kind)} | "
            f"{fmt(result['converted'][key], kind)} | {fmt(result['from_scratch'][key], kind)} | "
            f"{gap(result, kind)} ({result['quweit_model'].replace('_', ' ')}) | "
            f"{'met' if target_met(result, tolerance) else 'missed'}: {result['target']} | "
            f"{result['mlps_replaced']}/{result['mlps_found']} | {100 * result['mult_share_removed']:.1f}% | "
            f"{result['params_before']:,} -> {result['params_after']:,} | "
            f"{_minutes(result['wall_seconds'])}, {machine['torch_threads']} thread(s) x {machine['world_size']} "
            f"process(es), load {result['load_average_start'][0]:.1f} |")
    return lines


def budgets(found: dict[str, dict]) -> list[str]:
    lines = []
    for name, result in found.items():
        dense, tuned, scratch = (result["dense"]["training"], result["converted"]["finetuning"],
                                 result["from_scratch"]["training"])
        lines.append(f"- {EXPERIMENTS[name][0]} (`{result['command']}`, commit `{result['git_commit'][:10]}`): "
                     f"dense {dense['steps']} steps of {dense['batch_size']} in {_minutes(dense['seconds'])}; "
                     f"converted {tuned['steps']} fine-tuning steps in {_minutes(tuned['seconds'])}; "
                     f"from scratch {scratch['steps']} steps in {_minutes(scratch['seconds'])}; "
                     f"{result['blocks']['luts_total']:,} LUTs in all "
                     f"(n={result['block']['lut_inputs']}, T={result['block']['thresholds']}, "
                     f"G={result['block']['luts_per_output']}).")
    return lines


def samples(result: dict) -> list[str]:
    info = result["samples"]
    lines = [(f"{info['characters']} characters sampled by each model in onnxruntime with the kernel (prompt "
              f"`{info['prompt']}`, seed {info['seed']}, temperature {info['temperature']}; "
              "`examples/results/chargpt_fortunes.json`):"), ""]
    for model in ("dense", "converted", "from_scratch"):
        lines += [f"{model.replace('_', ' ')}:", "", "```text", info["prompt"] + result[model]["sample"], "```", ""]
    return lines


def sweep_plot(name: str, result: dict) -> Path:
    """Metric against LUT count and against the share of multiplications removed; the dense metric as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, kind, _ = EXPERIMENTS[name]
    key = "test_accuracy" if kind == "percent" else "test_loss"
    scale = 100 if kind == "percent" else 1
    points = result["sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, x_key, label in ((axes[0], "luts_total", "LUTs in all blocks (log scale)"),
                             (axes[1], "mult_share_removed", "share of the model's multiplications removed (%)")):
        xs = [p[x_key] * (100 if x_key == "mult_share_removed" else 1) for p in points]
        ys = [p[key] * scale for p in points]
        ax.scatter(xs, ys, color="tab:blue", zorder=3, label=f"quweit, {result['sweep_finetune_steps']} fine-tuning steps")
        for x, y, p in zip(xs, ys, points):
            b = p["block"]
            tag = f"n{b['lut_inputs']} T{b['thresholds']} G{b['luts_per_output']}" + (
                f" h{','.join(map(str, b['hidden_layers']))}" if b["hidden_layers"] else "")
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(result["dense_metric"] * scale, color="tab:red", linestyle="--", label="dense model")
        ax.set_xlabel(label)
        if x_key == "luts_total":
            ax.set_xscale("log")
    axes[0].set_ylabel(result["metric_name"] + (" (%)" if kind == "percent" else ""))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: block structure (LUT inputs n, thermometer bits T, LUTs per output G, hidden layer h)")
    fig.tight_layout()
    path = RESULTS / f"{name}_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_table(name: str, result: dict) -> list[str]:
    _, kind, _ = EXPERIMENTS[name]
    key = "test_accuracy" if kind == "percent" else "test_loss"
    lines = [f"![{name} sweep](examples/results/{name}_sweep.png)", "",
             (f"`{result['command']}` ({_minutes(result['wall_seconds'])}; dense {result['metric_name']} "
              f"{fmt(result['dense_metric'], kind)}):"), "",
             f"| n | T | G | hidden | LUTs | multiplications removed | {result['metric_name']} |",
             "|---|---|---|---|---|---|---|"]
    for p in result["sweep"]:
        b = p["block"]
        lines.append(f"| {b['lut_inputs']} | {b['thresholds']} | {b['luts_per_output']} | "
                     f"{','.join(map(str, b['hidden_layers'])) or '-'} | {p['luts_total']:,} | "
                     f"{100 * p['mult_share_removed']:.1f}% | {fmt(p[key], kind)} |")
    return lines


def section(plots: bool) -> str:
    found = {name: r for name in EXPERIMENTS if (r := load(name)) is not None}
    lines = [START, ""]
    if found:
        lines += results_table(found) + [""] + budgets(found) + [""]
    if "chargpt_fortunes" in found:
        lines += samples(found["chargpt_fortunes"])
    for name in EXPERIMENTS:
        sweep = load(f"{name}_sweep")
        if sweep is not None:
            if plots:
                sweep_plot(name, sweep)
            lines += sweep_table(name, sweep) + [""]
    return "\n".join(lines + [END])


def replace_section(text: str, new: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{README}: no section between '{START}' and '{END}'")
    return text[:text.index(START)] + new + text[text.index(END) + len(END):]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the README section is up to date")
    args = p.parse_args()
    text = README.read_text()
    new = replace_section(text, section(plots=not args.check))
    if args.check:
        if new != text:
            print("README's paper-results section differs from the result files: run examples/render_results.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"rendered {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
