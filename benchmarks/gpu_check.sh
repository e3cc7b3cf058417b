#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): Vesper-12 pretraining steps/s at batch
# 32 x 5 s (bf16, fp32, online teacher), WavLM-Large extraction throughput, BAS super-net
# step on cached Large features, projected hours for 100 epochs of LSSED. Writes a
# Markdown table (default gpu_check.md). Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUTPUT.md] [extra gpu_check.py options, e.g. --device cpu --tiny]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
output="${1:-gpu_check.md}"
shift || true
python="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# The whole check is bounded: a hung device must not hold the machine.
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$python" "$here/gpu_check.py" --output "$output" "$@"
