"""The converter's table and totals, as printed by `quweit-convert` (the JSON report holds the same)."""

from __future__ import annotations


def _where(row: dict) -> str:
    nodes = row["nodes"]
    return f"{nodes[-1]} ({len(nodes)} nodes)" if nodes else row["output"]


def format_table(report: dict, *, explain: bool = False) -> str:
    lines = []
    header = f"{'#':>3}  {'MLP (last node)':<58} {'family':<18} {'act':<10} {'shape':<22} {'alone':>6}  status"
    lines += [header, "-" * len(header)]
    for row in report["mlps"]:
        alone = f"{row['fidelity_alone']:.3f}" if "fidelity_alone" in row else "-"
        status = "replaced" if row["replaced"] else f"kept: {row['reason']}"
        where = _where(row)
        where = where if len(where) <= 58 else "..." + where[-55:]
        lines.append(f"{row['index']:>3}  {where:<58} {row['family']:<18} {row['activation']:<10} "
                     f"{row['shape']:<22} {alone:>6}  {status}")
    lines.append("")
    lines.append(f"replaced {report['mlps_replaced']}/{report['mlps_found']} MLPs")
    lines.append(f"parameters: {report['params_before']:,} -> {report['params_after']:,}")
    lines.append(f"multiply-accumulates per token (weight products): {report['macs_before']:,} -> "
                 f"{report['macs_after']:,}; share of the model's multiplications removed: "
                 f"{100 * report['mult_share_removed']:.1f}%")
    if "fidelity" in report:
        lines.append(f"fidelity (mean per-token cosine of the output to the original, held-out): {report['fidelity']:.4f}"
                     + (f" (floor {report['fidelity_floor']})" if report.get("fidelity_floor") else ""))
        lines.append("'alone' = fidelity with only that MLP converted (sensitivity table)")
    if explain:
        lines.append("")
        lines.append("candidates that did not match:" if report["not_matched"] else "no other candidates")
        for item in report["not_matched"]:
            lines.append(f"  {item['node']}: {item['reason']}")
    return "\n".join(lines)
