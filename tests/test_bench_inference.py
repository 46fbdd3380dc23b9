"""benchmarks/bench_inference.py: without a GPU it must run, build exact 2:4 weights for every shape, and say it measured nothing."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_inference  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what runs without a GPU")
def test_cpu_dry_run_says_not_measured(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert bench_inference.main(["--device", "cpu", "--tokens", "8", "--batch", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("not measured: no GPU") and text == out.read_text()
    assert "| bert.intermediate | 8 | 768 | 3072 | not measured |" in text
    assert "resnet50.layer4.conv2 | 49 | 4608 | 512" in text  # 7x7 outputs, 512 x 3 x 3 reduction


def test_resnet50_gemm_shapes_match_torchvision():
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    convs = {(m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels)
             for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and name != "conv1"}
    listed = {(k, n) for _, _, k, n in bench_inference.resnet50_shapes(1) if n != 1000}
    assert listed == convs
