#!/usr/bin/env bash
# Every GPU check and measurement, in parts of at most 5 minutes each (one device call each).
#
#   bash benchmarks/gpu_session.sh OUT_DIR 1|2|3|all [--dry-run]
#
# Installs the carried wheels (.whl/*.whl: deepspeed 0.19.7, pydantic, hjson, ...; see
# benchmarks/README.md) into $DSTRAIN_SITE (default /tmp/site) with --no-deps --target, puts
# that folder and the repo on PYTHONPATH and its bin/ (the deepspeed launcher) on PATH, then
# runs benchmarks/gpu_session.py with python3.  A failed step is recorded in OUT_DIR/steps.json
# and summary.md and the session goes on; at the end of each part every other file it wrote
# (install.txt included) is packed into OUT_DIR/part<N>.tar.gz, because the device tool brings
# back at most 8 files.
#
# Device tool, once per checkout (the device machine gets the checkout, not ../shared):
#   mkdir -p .whl && cp ../shared/gpu-wheels/*.whl .whl/      (.whl/ is in .gitignore)
# then two calls of the `device` tool's `run`, each with carry [".whl"] and timeout_s 330:
#   command: bash benchmarks/gpu_session.sh "$OUT" 1
#   command: bash benchmarks/gpu_session.sh "$OUT" 2
# or, for a short extra call (environment and the two speedchecks only), timeout_s 210:
#   command: bash benchmarks/gpu_session.sh "$OUT" 3
# CPU rehearsal in the device image's versions (see benchmarks/README.md):
#   PYTHON=/work/venv312/bin/python3 DSTRAIN_SITE=/tmp/site312 bash benchmarks/gpu_session.sh /tmp/dry 1 --dry-run
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR 1|2|3|all [--dry-run]}
part=${2:-1}
shift 2 || shift $#
cd "$(dirname "$0")/.."
mkdir -p "$out"
py=${PYTHON:-python3}
site=${DSTRAIN_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" > /dev/null; then
  if [ -d "$site/deepspeed" ]; then
    echo "carried wheels already installed in $site" | tee "$out/install.txt"
  else
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl > "$out/install.txt" 2>&1 \
      || echo "wheel install failed (see install.txt); continuing with what is installed"
  fi
else
  echo "no .whl/*.whl in the checkout: using the installed packages" | tee "$out/install.txt"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
exec "$py" benchmarks/gpu_session.py --out "$out" --part "$part" "$@"
