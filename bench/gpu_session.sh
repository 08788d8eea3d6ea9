#!/usr/bin/env bash
# One call on a lent GPU machine (no package index there): install the carried wheels, then run what is asked:
#   bash bench/gpu_session.sh smoke|tests|fast-tests|check|bench|bench-f64|bench-half|bench-bidirectional|tune|tune-tf32|lm|lm-fused|lm-graph|lm-half|variants|generate|sanitize
#   (several words run in order)
# Wheels missing from the GPU image (array-api-compat) travel in .whl/ (see README, "GPU machine").
# A kernel that never returns (a grid barrier some block never reaches) hangs its process: every step runs under
# `timeout` (STEP_TIMEOUT seconds, 540 by default), and `smoke` tries each CuPy layer path on its own first
# (SMOKE_TIMEOUT, 120), so a hang costs one line naming the path, not the session. Where a call may run 10 minutes
# at most, spread the steps over calls: `smoke tests`, then `check bench`, then `tune tune-tf32 lm lm-fused lm-graph`,
# then, with time left, `sanitize` (NVIDIA's compute-sanitizer over bench/gpu_sanitize.py: SANITIZE_RUNS lists
# path:tool pairs, "+fused" adding the fused loss, clipping and updates, "+options" every cell option the path
# takes, "+proj" the LSTMP cell, "+bidirectional" a bidirectional LSTM; each run under SANITIZE_TIMEOUT, 240 s).
# A path that fails or hangs in `smoke` is written to $SMOKE_FAILED (kept between calls on a warm machine), and the
# later steps leave it out (`tests` deselects its tests, `bench` its columns, `lm-graph` is skipped for cupy-graph),
# so one broken path does not stall or poison (a CUDA error sticks to the process) the others' results.
set -uo pipefail
export PYTHONUNBUFFERED=1
STEPS="smoke tests fast-tests check bench bench-f64 bench-half bench-bidirectional tune tune-tf32 lm lm-fused lm-graph lm-half variants generate sanitize"
for what in "$@"; do  # a misspelt step is refused before any runs (not found out after the others spent the call)
    case " $STEPS " in *" $what "*) ;; *) echo "gpu_session.sh: error: unknown step '$what' (steps: $STEPS)"; exit 2 ;; esac
done
[ $# -gt 0 ] || { echo "gpu_session.sh: error: name one or more steps: $STEPS"; exit 2; }
if ls .whl/*.whl >/dev/null 2>&1; then
    # once per machine and set of wheels: several of these scripts may run at once, and none reinstalls under another
    if [ ! -e /tmp/site/.installed ] || [ -n "$(find .whl -name '*.whl' -newer /tmp/site/.installed)" ]; then
        mkdir -p /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && touch /tmp/site/.installed || exit 1
    fi
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
# The GPU image's mpi4py uses its Open MPI, whose mpiexec refuses root unless told (the MPI tests launch it).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=${OUT:-/tmp/lstmx-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
# Modules that need no GPU (the emulator, the offline NVRTC compiles, the bench scripts' doors): CI runs them, and
# here they would spend device minutes building emulated kernels.
CPU_ONLY="--ignore=tests/test_cuda_emulated.py --ignore=tests/test_cuda_compile.py --ignore=tests/test_bench_scripts.py"
SMOKE_FAILED=${SMOKE_FAILED:-bench/results/smoke_failed.txt}
left_out() { [ -s "$SMOKE_FAILED" ] && cat "$SMOKE_FAILED"; }  # the paths that failed the last smoke step
status=0
step() {  # step NAME SECONDS COMMAND...: runs COMMAND, saying so when it ran out of time
    local name=$1 seconds=$2; shift 2
    timeout --kill-after=10 "$seconds" "$@"
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "$name: TIMED OUT after $seconds s (a kernel that never returned?)"; fi
    return $rc
}
for what in "$@"; do
    case "$what" in
        smoke)
            mkdir -p "$(dirname "$SMOKE_FAILED")"; : >"$SMOKE_FAILED"
            for impl in cupy-tiled cupy-tiled-tf32 cupy-tiled-bf16 cupy-tiled-fp16 cupy-graph cupy-persistent cupy-stepwise; do
                if step "smoke $impl" "${SMOKE_TIMEOUT:-120}" python3 -m pytest -q -x -p no:cacheprovider --backends cupy \
                        tests/test_fast_paths.py -k "test_fast_layer_matches_generic and $impl and not $impl-" >"$OUT/smoke-$impl.log" 2>&1; then
                    echo "smoke $impl: $(tail -1 "$OUT/smoke-$impl.log")"
                else
                    echo "smoke $impl: FAILED (rc $?): $(grep -m3 -E 'Error|assert|TIMED' "$OUT/smoke-$impl.log" | tr '\n' ' ')"; status=1
                    echo "$impl" >>"$SMOKE_FAILED"
                fi
            done ;;
        tests)
            # the tests that run on CuPy or name a CuPy path (the rest is CI's), less those of the paths left out
            # ("cupy-tiled" → "not tiled")
            keep="cupy"
            for impl in $(left_out); do keep="$keep and not ${impl#cupy-}"; done
            [ -z "$(left_out)" ] || echo "tests: leaving out $(left_out | tr '\n' ' ')(failed the smoke step): -k '$keep'"
            # the image's pytest-xdist spreads them over the cores; pytest-timeout ends a test whose kernel never
            # returns (its worker is replaced), so a hang costs one failed test, not the step
            spread=""
            if python3 -c "import xdist, pytest_timeout" 2>/dev/null; then
                spread="-n ${TEST_WORKERS:-8} --timeout ${TEST_TIMEOUT:-300} -o timeout_method=thread"
            fi
            step "$what" "${STEP_TIMEOUT:-540}" python3 -m pytest -q -p no:cacheprovider --backends cupy $CPU_ONLY \
                $spread -k "$keep" -rfE tests 2>&1 | tee "$OUT/pytest-cupy.log" | tail -40 || status=1 ;;
        fast-tests) step "$what" "${STEP_TIMEOUT:-540}" python3 -m pytest -q -p no:cacheprovider --backends cupy tests/test_fast_paths.py tests/test_gradients.py 2>&1 | tail -25 || status=1 ;;
        check)
            [ -z "$(left_out)" ] || echo "check: runs every path, $(left_out | tr '\n' ' ')included (each fails its own row)"
            step "$what" "${STEP_TIMEOUT:-540}" python3 -m lstmx.cli check 2>&1 | tee "$OUT/check.log" || status=1 ;;
        bench|bench-f64)  # float32 (9 repeats), or float64 (5: its rows only decide "auto", no TF32 columns)
            if [ "$what" = bench ]; then dtype=float32 repeats=9 name=gpu_vs_cpu
            else dtype=float64 repeats=5 name=gpu_vs_cpu_float64; fi
            step "$what" "${STEP_TIMEOUT:-540}" python3 bench/gpu_vs_cpu.py --no-cpu --dtype $dtype --repeats $repeats \
                $(for impl in $(left_out); do echo "--skip-impl $impl"; done) 2>&1 | tee "$OUT/$what.log" | grep -v "^  ("
            cp bench/results/$name.* "$OUT/" 2>/dev/null ;;
        bench-half)  # the 16-bit tiled paths under precision="bf16"/"fp16" against cuDNN in float16 and bfloat16
            step "$what" "${STEP_TIMEOUT:-540}" python3 bench/gpu_vs_cpu.py --no-cpu --half --repeats 5 \
                $(for impl in $(left_out); do echo "--skip-impl $impl"; done) 2>&1 | tee "$OUT/$what.log" | grep -v "^  ("
            cp bench/results/gpu_vs_cpu_half.* "$OUT/" 2>/dev/null ;;
        bench-bidirectional)  # both directions against cuDNN's bidirectional LSTM, on the issue's row
            step "$what" "${STEP_TIMEOUT:-540}" python3 bench/gpu_vs_cpu.py --no-cpu --bidirectional --configs 64,100,256,256 \
                16,200,128,128 --repeats 9 $(for impl in $(left_out); do echo "--skip-impl $impl"; done) 2>&1 \
                | tee "$OUT/$what.log" | grep -v "^  ("
            cp bench/results/gpu_vs_cpu_bidirectional.* "$OUT/" 2>/dev/null ;;
        tune) step "$what" "${STEP_TIMEOUT:-540}" python3 bench/tune_tiled.py 2>&1 | tee "$OUT/tune.log"; cp bench/results/tune_tiled.json "$OUT/" 2>/dev/null ;;
        tune-tf32) step "$what" "${STEP_TIMEOUT:-540}" python3 bench/tune_tiled.py --precision tf32 2>&1 | tee "$OUT/tune-tf32.log"; cp bench/results/tune_tiled_tf32.json "$OUT/" 2>/dev/null ;;
        lm) step "$what" "${STEP_TIMEOUT:-540}" python3 bench/train_vs_torch.py --backend cupy ${LM_ARGS:-} 2>&1 | tee "$OUT/lm.log" | tail -8; cp bench/results/train_vs_torch.json "$OUT/" 2>/dev/null ;;
        lm-fused) step "$what" "${STEP_TIMEOUT:-540}" python3 bench/train_vs_torch.py --backend cupy --update-impl cupy-fused --loss-impl cupy-fused ${LM_ARGS:-} 2>&1 | tee "$OUT/lm-fused.log" | tail -8; cp bench/results/train_vs_torch.json "$OUT/train_vs_torch_fused.json" 2>/dev/null ;;
        lm-graph)
            if left_out | grep -qx cupy-graph; then echo "lm-graph: left out (cupy-graph failed the smoke step)"; continue; fi
            step "$what" "${STEP_TIMEOUT:-540}" python3 bench/train_vs_torch.py --backend cupy --impl cupy-graph --update-impl cupy-fused --loss-impl cupy-fused ${LM_ARGS:-} 2>&1 | tee "$OUT/lm-graph.log" | tail -8; cp bench/results/train_vs_torch.json "$OUT/train_vs_torch_graph.json" 2>/dev/null ;;
        lm-half)  # the recipe under precision="bf16"/"fp16" on the 16-bit tiled kernels, against PyTorch's AMP
            for half in bf16 fp16; do
                if left_out | grep -qx "cupy-tiled-$half"; then echo "lm-half $half: left out (failed the smoke step)"; continue; fi
                step "lm-half $half" "${STEP_TIMEOUT:-540}" python3 bench/train_vs_torch.py --backend cupy --precision $half \
                    --impl cupy-tiled-$half --update-impl cupy-fused --loss-impl cupy-fused ${LM_ARGS:-} 2>&1 \
                    | tee "$OUT/lm-$half.log" | tail -8
                cp bench/results/train_vs_torch_$half.json "$OUT/" 2>/dev/null
            done ;;
        variants)  # each cell option's cost per step on each CUDA path that takes it (bench/variant_cost.py)
            for impl in cupy-tiled cupy-persistent cupy-graph cupy-stepwise; do
                if left_out | grep -qx "$impl"; then echo "variants $impl: left out (failed the smoke step)"; continue; fi
                step "variants $impl" "${STEP_TIMEOUT:-540}" python3 bench/variant_cost.py --backend cupy --impl "$impl" \
                    2>&1 | tee "$OUT/variants-$impl.log" | tail -14
                cp bench/results/variant_cost.json "$OUT/variant_cost_$impl.json" 2>/dev/null
            done ;;
        generate)  # the device token loop against PyTorch's CUDA one, after memcheck and racecheck over a short run
            for tool in memcheck racecheck; do
                step "generate $tool" "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
                    --print-limit 20 python3 bench/generate_vs_torch.py --backend cupy --impl cupy-fused --tokens 20 \
                    --samples 3 --rounds 1 >"$OUT/generate-$tool.log" 2>&1
                rc=$?
                [ $rc -eq 0 ] || status=1
                echo "generate $tool: rc $rc; $(grep -m1 -e 'ERROR SUMMARY' -e 'RACECHECK SUMMARY' -e 'TIMED OUT' "$OUT/generate-$tool.log" | sed 's/^=* *//')"
            done
            step "$what" "${STEP_TIMEOUT:-540}" python3 bench/generate_vs_torch.py --backend cupy --impl cupy-fused 2>&1 \
                | tee "$OUT/generate.log" | tail -10
            cp bench/results/generate_vs_torch_cupy.json "$OUT/" 2>/dev/null ;;
        sanitize)
            for run in ${SANITIZE_RUNS:-tiled:memcheck tiled:racecheck tiled:synccheck graph+fused:memcheck persistent:memcheck stepwise+options:memcheck stepwise+options:racecheck stepwise+options+proj:memcheck graph+options+proj:memcheck tiled+options:memcheck tiled+options:racecheck persistent+options:memcheck persistent+proj:memcheck persistent+proj:racecheck tiled+proj:memcheck tiled+proj:racecheck tiled-tf32:memcheck tiled-bf16:memcheck tiled-bf16:racecheck tiled-fp16:memcheck tiled-tf32+proj:memcheck tiled-tf32+proj:racecheck persistent+bidirectional:memcheck tiled+bidirectional:memcheck}; do
                path=${run%%:*}; tool=${run#*:}; fused=""
                case "$path" in *+bidirectional) fused="--bidirectional"; path=${path%+bidirectional} ;; esac
                case "$path" in *+proj) fused="--proj-size 8"; path=${path%+proj} ;; esac
                case "$path" in *+options) fused="--cell-options $fused"; path=${path%+options} ;; esac
                case "$path" in *+fused) fused="--fused $fused"; path=${path%+fused} ;; esac
                log="$OUT/sanitize-${run//[+:]/-}.log"  # one per run: tiled:memcheck and tiled+proj:memcheck are two
                step "sanitize $run" "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
                    --print-limit 20 python3 bench/gpu_sanitize.py --impl "cupy-$path" $fused >"$log" 2>&1
                rc=$?
                [ $rc -eq 0 ] || status=1
                echo "sanitize $run: rc $rc; $(grep -m1 -e 'ERROR SUMMARY' -e 'RACECHECK SUMMARY' -e 'TIMED OUT' "$log" | sed 's/^=* *//');" \
                     "$(grep -c '  pass  ' "$log") pass, $(grep -c '  FAIL  ' "$log") FAIL"  # rows of lstmx check's table
            done ;;
    esac
done
exit $status
