#!/usr/bin/env bash
# Optional second call on the same warm GPU machine, right after gpu_check.sh, if device time
# is left (its benchmark is cut at 200 s; not run on a GPU yet): the torch.compile'd network,
# 512² latency and the batch-8 training step on 256² crops with the VGG loss, fp32 and bf16
# (issue 5: step ≤ 120 ms).
#   run(command="SAMAM_COMMIT=<short sha> bash experiments/gpu_compile.sh", carry=["wheels"], timeout_s=240)
# Output (into $OUT when set): gpu_compile.log, results.csv, results.md, scaling.png, meta.json.
# shellcheck source=experiments/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh" gpu-compile

# A warm machine keeps .site/ from gpu_check.sh; a fresh one installs the wheel again.
if ! "$PY" -c "import selective_scan_cuda" 2>/dev/null && ls wheels/mamba_ssm-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target .site wheels/mamba_ssm-*.whl
fi
# Each case's first call compiles (not counted in --case-seconds); --budget stops new cases.
timeout --preserve-status -s INT -k 10 200 "$PY" experiments/benchmark.py --device cuda --compile \
    --precision fp32 bf16 --tasks latency train --sizes 512 --train-batch 8 --train-sizes 256 \
    --warmup 3 --repeats 10 --case-seconds 4 --budget 170 --out "$OUT"
finish $?
