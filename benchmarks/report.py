"""Print pytest-benchmark JSON output as Markdown tables.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json

One table per benchmark group (model x optimizer, or model x selection): median
time per step, effective GB/s, that as a % of the copy bandwidth measured in the
same run, the speed-up against the group's baseline, and the time relative to the
group's ``dense_torch_fused`` row (from the table's own medians, and from
alternating pairs where the row has ``paired_vs_dense``).  Every figure comes
from ``extra_info`` (written by ``common.record``) or the medians of the same
JSON file; a group that lacks a field (another benchmark file's own group, e.g.
host-side timings) gets "n/a" in that column, or its own simple table.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Dict, List, Optional

DENSE = "dense_torch_fused"


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def _label(bench: Dict) -> str:
    return bench.get("extra_info", {}).get("label", bench.get("name", "?"))


def _median_ms(bench: Dict) -> float:
    return bench["stats"]["median"] * 1e3


def _copy_gbps(benchmarks: List[Dict]) -> Optional[float]:
    for b in benchmarks:
        value = b.get("extra_info", {}).get("copy_gbps")
        if value is not None:
            return value
    return None


def _group_table(group: str, benches: List[Dict]) -> List[str]:
    info0 = benches[0].get("extra_info", {})
    n_params = info0.get("n_params")
    size = f" ({info0.get('n_tensors', '?')} tensors, {n_params / 1e6:.1f}M params)" if n_params else ""
    dense = next((b for b in benches if _label(b) == DENSE), None)
    baseline = next((b.get("extra_info", {}).get("baseline") for b in benches
                     if b.get("extra_info", {}).get("baseline")), None)
    header = ["implementation", "median ms/step", "GB/s", "% of copy"]
    if baseline:
        header.append(f"speed-up vs {baseline}")
    if dense is not None:
        header += [f"time / {DENSE}", "same, paired"]
    lines = ["", f"#### {group}{size}", "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    for b in sorted(benches, key=lambda b: b["stats"]["median"]):
        info = b.get("extra_info", {})
        row = [_label(b), f"{_median_ms(b):.3f}", _fmt(info.get("gbps"), ".1f"), _fmt(info.get("pct_of_copy"), ".0f", " %")]
        if baseline:
            row.append(_fmt(info.get("speedup_vs_baseline"), ".2f", "x"))
        if dense is not None:
            row += [f"{b['stats']['median'] / dense['stats']['median']:.2f}x",
                    _fmt(info.get("paired_vs_dense"), ".2f", "x")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render(data: Dict) -> str:
    benchmarks = data.get("benchmarks", [])
    groups: Dict[str, List[Dict]] = defaultdict(list)
    for bench in benchmarks:
        groups[bench.get("group") or "ungrouped"].append(bench)
    device = next((b["extra_info"].get("device") for b in benchmarks if b.get("extra_info", {}).get("device")), None)
    lines: List[str] = [f"Benchmarks of {data.get('datetime', '?')} on {device or '?'}"]
    copy = _copy_gbps(benchmarks)
    if copy is not None:
        lines.append(f"Copy bandwidth measured in this run: {copy:.1f} GB/s (read + write of a large fp32 tensor).")
    for group, benches in groups.items():
        lines += _group_table(group, benches)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json")
    args = parser.parse_args()
    with open(args.json_file) as f:
        print(render(json.load(f)))


if __name__ == "__main__":
    main()
