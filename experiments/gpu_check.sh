#!/usr/bin/env bash
# One scarce GPU slot, every figure: install mamba-ssm, check the kernels, run the GPU tests
# (correctness first, so a cut-short slot still has it), then benchmark on CUDA and 8192². Not run
# on a GPU yet (no timing); it is sized to end by a deadline: each phase's timeout is
# its cap or what is left before a deadline ($GPU_CHECK_SECONDS, default 560 s, under the
# device call's 600), whichever is smaller; the CUDA benchmark keeps room for the 8192² phase,
# while the correctness phases keep none (under a shorter deadline the benchmarks are cut).
#
# Before the slot, in the checkout on the CPU machine (wheels/ is git-ignored):
#   mkdir -p wheels && cp ../shared/wheels/* wheels/
#   # optional, for same-run ratios vs the authors' code (never committed; only what it imports,
#   # to stay under the 64 MiB carry limit):
#   mkdir -p wheels/SaMam && cp -r /path/to/SaMam/{ARCHI,MODEL} wheels/SaMam/
#   # (or from a bare mirror: git --git-dir=<mirror> archive HEAD ARCHI MODEL | tar -x -C wheels/SaMam)
#   # wheels/ then holds ~38 MB; the tree that travels must stay under 64 MiB.
# Then through the device tool:
#   run(command="SAMAM_COMMIT=<short sha> bash experiments/gpu_check.sh", carry=["wheels"], timeout_s=600)
# Elsewhere: `bash experiments/gpu_check.sh` (writes to experiments/results/<date>-gpu-check/);
# PY=/path/to/python picks the interpreter (default python3).
#
# Output (≤ 8 files, into $OUT when set): gpu_check.log (everything printed), results.csv,
# results.md, scaling.png, meta.json, results_8192.csv. Exit status: 0 when every phase passed.
# shellcheck source=experiments/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh" gpu-check
status=()
phase() { echo; echo "=== $* ($(date +%T), ${SECONDS} s)"; }
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-560}))
# budget CAP RESERVE: seconds for the next phase: CAP, or less so that RESERVE stays for later ones.
budget() {
    local left=$((DEADLINE - SECONDS - $2))
    if [ "$left" -lt "$1" ]; then echo $((left > 10 ? left : 10)); else echo "$1"; fi
}

phase machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
for m in matplotlib pytest; do  # without matplotlib no scaling.png (replot later: benchmark.py --replot)
    "$PY" -c "import $m; print('$m', $m.__version__)" 2>/dev/null || echo "$m: not installed"
done

phase "install mamba-ssm from wheels/"
if ls wheels/mamba_ssm-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target .site wheels/mamba_ssm-*.whl
    status+=("install=$?")
elif "$PY" -c "import selective_scan_cuda" 2>/dev/null; then
    echo "mamba-ssm's CUDA scan already imports: nothing to install"
else
    echo "no wheels/mamba_ssm-*.whl and mamba-ssm is not installed: copy ../shared/wheels/ into wheels/"
    echo "and carry it (see the header), or pip install mamba-ssm (README, GPU)"
    status+=("install=missing")
fi

if [ -f wheels/smoke_test_selective_scan.py ]; then
    phase "mamba-ssm kernel vs reference (wheels/smoke_test_selective_scan.py)"
    timeout -s INT -k 10 "$(budget 50 0)" "$PY" wheels/smoke_test_selective_scan.py
    status+=("smoke=$?")
fi

# Without this, the mamba tests skip and `auto` quietly times the pure-torch scan on CUDA.
phase "samam sees mamba-ssm's kernel"
"$PY" -c "from samam.ops.selective_scan import mamba_available as ok, mamba_unavailable_reason as why
assert ok(), why()
print('mamba backend: available')"
status+=("mamba=$?")

phase "GPU-marked tests"
gpu_tests=$(grep -rl --include='test_*.py' 'mark.gpu' tests | sort)
if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "pytest is not installed here: GPU tests not run"
    status+=("pytest=missing")
elif [ -z "$gpu_tests" ]; then
    echo "no GPU-marked tests found"
    status+=("pytest=none")
else
    # Only the files that hold GPU tests: others (and their conftests) may import hydra,
    # wandb or lpips, which this machine lacks.
    echo "$gpu_tests"
    # shellcheck disable=SC2086
    timeout -s INT -k 10 "$(budget 110 0)" "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors $gpu_tests
    status+=("pytest=$?")
fi

phase "benchmark on CUDA (fp32 and bf16; eager and CUDA-graph replay; StyTr² as published)"
release=()
if [ -f wheels/SaMam/MODEL/SaMam_model.py ]; then
    release=(--release-path wheels/SaMam)
fi
# --budget stops starting new cases; the timeout (SIGINT) still leaves the tables and plot, and
# --preserve-status keeps the benchmark's own exit status (130 when the timeout cut it short).
timeout --preserve-status -s INT -k 10 "$(budget 260 70)" "$PY" experiments/benchmark.py --device cuda --precision fp32 bf16 \
    --sizes 256 512 1024 2048 4096 --throughput-batch 8 --throughput-sizes 512 \
    --train-batch 8 --train-sizes 256 --warmup 3 --repeats 10 --case-seconds 4 --time-limit 30 \
    --budget 200 --cuda-graph --peers stytr2 --out "$OUT" "${release[@]}"
status+=("benchmark=$?")

phase "8192², batch 1, fp32 (ours in passes under 32-bit indexing; the release fails here)"
# Its own folder, then one CSV into $OUT: the device tool returns at most 8 files.
big=$(mktemp -d)
timeout --preserve-status -s INT -k 10 "$(budget 80 0)" "$PY" experiments/benchmark.py --device cuda \
    --precision fp32 --tasks latency --sizes 8192 --warmup 1 --repeats 2 --time-limit 60 --out "$big" "${release[@]}"
echo "8192² benchmark exit status $? (the release may fail or be cut short here; judged by our row below)"
cp "$big/results.csv" "$OUT/results_8192.csv" 2>/dev/null
cat "$big/results.md" 2>/dev/null
# Passed only with a timed row of ours (an interrupted or skipped case also writes a CSV).
"$PY" -c "import csv, sys; sys.exit(not any(r['impl'] == 'samam' and r['status'] == 'ok' for r in csv.DictReader(open(sys.argv[1]))))" "$big/results.csv" 2>/dev/null
status+=("ours8192=$?")

phase summary
echo "${status[*]}"
ls -l "$OUT"
rc=0
for s in "${status[@]}"; do
    [ "${s#*=}" = 0 ] || rc=1
done
finish $rc
