"""Print pytest-benchmark JSON output as Markdown tables.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json

One table per benchmark group (model x optimizer, or model x selection): median
time per step, effective GB/s and the speed-up against the baseline that the same
run measured (``extra_info``, written by ``common.record``).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Dict, List


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(data: Dict) -> str:
    groups: Dict[str, List[Dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench.get("group") or "ungrouped"].append(bench)
    lines: List[str] = []
    device = next((b["extra_info"].get("device") for b in data.get("benchmarks", []) if b.get("extra_info")), None)
    lines.append(f"Benchmarks of {data.get('datetime', '?')} on {device or '?'}")
    for group, benches in groups.items():
        info0 = benches[0].get("extra_info", {})
        lines += ["", f"### {group} ({info0.get('n_tensors', '?')} tensors, "
                      f"{info0.get('n_params', 0) / 1e6:.1f}M params)", "",
                  f"| implementation | median ms/step | GB/s | speed-up vs {info0.get('baseline', 'baseline')} |",
                  "|---|---:|---:|---:|"]
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            info = b.get("extra_info", {})
            lines.append(f"| {info.get('label', b['name'])} | {b['stats']['median'] * 1e3:.3f} | "
                         f"{_fmt(info.get('gbps'), '.0f')} | {_fmt(info.get('speedup_vs_baseline'), '.2f')}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json")
    args = parser.parse_args()
    with open(args.json_file) as f:
        print(render(json.load(f)))


if __name__ == "__main__":
    main()
