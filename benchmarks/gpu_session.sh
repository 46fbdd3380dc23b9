#!/usr/bin/env bash
# The GPU checks and measurements of the kernel and scale work, in one run, so that a
# single lease of a GPU machine produces every figure the README's GPU tables need.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [--skip-throughput]
#
# Writes into OUT_DIR (flat, small files only):
#   gpu.txt          the GPU, driver, torch and triton versions
#   selfcheck.txt    compiled fused steps vs the PyTorch reference (python -m dstrain.optim.selfcheck)
#   aot.md           what each kernel variant compiled to for this GPU's architecture
#   bench.json/.md   pytest-benchmark results and their tables (benchmarks/report.py)
#   throughput.md    ResNet50 ZeRO-2/bf16 images/s, dense vs 90% mask (result.json's
#                    train_samples_per_s_after_warmup: autotuning and cuDNN search left out)
# Exits non-zero if the self-check fails (nothing after it would be worth reading).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR [--skip-throughput]}
mkdir -p "$out"
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } | tee "$out/gpu.txt"

python -m dstrain.optim.selfcheck 2>&1 | tee "$out/selfcheck.txt" || { echo "selfcheck failed"; exit 1; }

arch=$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(10 * m + n)")
python -m kernels.aot --arch "$arch" | tee "$out/aot.md"

pytest benchmarks/ --benchmark-only -q -p no:cacheprovider --benchmark-json="$out/bench.json" 2>&1 | tail -n 20
python benchmarks/report.py "$out/bench.json" | tee "$out/bench.md"

if [ "${2:-}" != "--skip-throughput" ]; then
  runs=$(mktemp -d)
  for r in dense sparse90; do
    deepspeed --num_gpus 1 launch/train.py --no_progress --deepspeed_config launch/configs/1gpu_zero2_bf16.json \
      --recipe "recipes/bench/resnet50_synthetic_$r.yaml" --output_dir "$runs/$r" 2>&1 | tail -n 5
  done
  python - "$runs" <<'EOF' | tee "$out/throughput.md"
import json, sys
from pathlib import Path
results = {r: json.loads((Path(sys.argv[1]) / r / "result.json").read_text()) for r in ("dense", "sparse90")}
rates = {r: res["train_samples_per_s_after_warmup"] for r, res in results.items()}
print("| run | images/s after 20 warm-up steps | images/s, all steps |\n|---|---:|---:|")
for r, res in results.items():
    print(f"| {r} | {rates[r]:.1f} | {res['train_samples_per_s']:.1f} |")
print(f"\nsparse overhead: {100 * (rates['dense'] / rates['sparse90'] - 1):+.2f}% time per image")
EOF
fi
