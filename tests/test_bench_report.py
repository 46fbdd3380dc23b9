"""benchmarks/report.py: the README's benchmark tables from a pytest-benchmark JSON file.

The benchmarks themselves need minutes and real shapes (documented runs); what CI
can pin is that the report computes its ratio columns from the file's own numbers
and renders groups written by other benchmark files (fields it does not know) as n/a.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _report_module():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(group, label, median_s, **info):
    return {"group": group, "name": f"test[{label}]", "stats": {"median": median_s},
            "extra_info": dict(label=label, **info)}


def test_report_tables_ratios_and_foreign_groups():
    common = dict(n_tensors=161, n_params=25_557_032, device="test cpu", copy_gbps=20.0, baseline="unfused_masked")
    data = {"datetime": "2026-11-28T05:00:00", "benchmarks": [
        _bench("resnet50-adamw", "unfused_masked", 0.100, gbps=7.0, pct_of_copy=35.0, speedup_vs_baseline=1.0, **common),
        _bench("resnet50-adamw", "dense_torch_fused", 0.020, gbps=36.0, pct_of_copy=180.0, speedup_vs_baseline=5.0,
               **common),
        _bench("resnet50-adamw", "dstrain_cpu", 0.022, gbps=34.0, pct_of_copy=170.0, speedup_vs_baseline=4.55,
               paired_vs_dense=1.04, **common),
        _bench("host-bert_base", "host_step", 0.00015),  # another file's group: none of our fields
    ]}
    text = _report_module().render(data)
    assert "on test cpu" in text and "Copy bandwidth measured in this run: 20.0 GB/s" in text
    assert "#### resnet50-adamw (161 tensors, 25.6M params)" in text
    assert "| implementation | median ms/step | GB/s | % of copy | speed-up vs unfused_masked | " \
           "time / dense_torch_fused | same, paired |" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["dstrain_cpu"] == "| dstrain_cpu | 22.000 | 34.0 | 170 % | 4.55x | 1.10x | 1.04x |"
    assert rows["unfused_masked"].endswith("| 5.00x | n/a |"), "ratio to dense from the two medians of the file"
    assert "#### host-bert_base" in text
    assert rows["host_step"] == "| host_step | 0.150 | n/a | n/a |"
    lines = text.splitlines()
    assert lines.index("#### resnet50-adamw (161 tensors, 25.6M params)") < lines.index("#### host-bert_base")
