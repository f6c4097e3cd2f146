#!/bin/bash
# Issue 17's CPU measurements on the processor at hand, in one call (about 30 minutes on two cores), for the
# first session on a kind of machine no one has measured yet (the Zen 3 with AVX2 only was never lent):
#   0. the processor: lscpu's model name and flags, PyTorch's capability, native bf16 or not;
#   1. ResNet-20: the training loop against the bare eager step in fp32, and in bf16 where it is native
#      (bench/train_throughput.py; target >= 1.2x: AVX2 fp32, AMX bf16);
#   2. the fp32 bound: the compiled step with batch norm (and ReLU) removed (bench/compile_step.py no-bn);
#   3. where the fp32 step's CPU time goes, by library and thread (bench/step_profile.py --perf; needs perf);
#   4. ResNet-50 inference, every backend at batch 1 and 16 (resnet benchmark; targets: batch 16 >= 3x
#      onnxruntime fp32 on AVX2 and ahead of onnxruntime-int8, batch 1 <= onnxruntime-int8), and the cores'
#      fp32 / int8 / bf16 matrix-product rates with what 3x onnxruntime fp32 asks of int8 (bench/matmul_rates.py);
#   5. int8 agreement with fp32 on the committed trained ResNet-20 (needs the CIFAR-10 JPEGs);
#   6. `resnet demo`'s wall time (target <= 5 minutes).
# Run it from the repository root with nothing else on the machine (it creates .venv if needed):
#   bash bench/cpu_session.sh                        # results in $OUT (default runs/cpu-session), one file a step
#   QUICK=1 DEMO=0 OUT=/tmp/cpu-smoke bash bench/cpu_session.sh   # a smoke test of the script (~4 minutes)
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-runs/cpu-session}
DATA=${DATA:-../shared/data/cifar10-train-jpg.tar.gz}
QUICK=${QUICK:-0}
DEMO=${DEMO:-1}
if [ "$QUICK" = 1 ]; then STEPS=4 REPEATS=1 ROUNDS=1 SECONDS_=0.2 IMAGES=64 PERF_STEPS=3 MM_SIZE=1024
else STEPS=60 REPEATS=3 ROUNDS=7 SECONDS_=3 IMAGES=1024 PERF_STEPS=60 MM_SIZE=4096; fi
mkdir -p "$OUT"
bash bin/with-env true || exit 1  # the environment first, so that no step below times its creation
run() {  # run NAME LIMIT_SECONDS COMMAND...: COMMAND's output into $OUT/NAME.txt, killed past the limit
    local name=$1 limit=$2; shift 2
    local t=$(date +%s)
    bash bin/with-env timeout -s KILL "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: rc $rc, $(( $(date +%s) - t )) s" | tee -a "$OUT/summary.txt"
    tail -n 16 "$OUT/$name.txt"
}
: > "$OUT/summary.txt"

{ lscpu | grep -E "Model name|^CPU\(s\)|L3"; grep -o -w -E "avx2|fma|avx512f|avx512_vnni|avx512_bf16|amx_tile|avx_vnni" \
    /proc/cpuinfo | sort -u | tr '\n' ' '; echo; } > "$OUT/machine.txt"
run capability 60 python -c "import torch; from resnet.engine.precision import bf16_pays, cpu_supports_bf16; \
print('torch', torch.__version__, 'capability', torch.backends.cpu.get_cpu_capability(), \
'native bf16', cpu_supports_bf16(), 'bf16 faster than fp32', bf16_pays(), 'threads', torch.get_num_threads())"
cat "$OUT/machine.txt"

if grep -q "native bf16 True" "$OUT/capability.txt"; then  # bf16 where native (the trainer takes it only where faster), then fp32
    run loop-bf16 1200 python bench/train_throughput.py --precision bf16 --steps "$STEPS" --repeats "$REPEATS"
fi
run loop-fp32 1200 python bench/train_throughput.py --precision fp32 --steps "$STEPS" --repeats "$REPEATS"
run fp32-bound 1200 python bench/compile_step.py --precision fp32 --variants eager,default,no-bn,no-bn-relu \
    --steps 10 --rounds "$ROUNDS"
if command -v perf > /dev/null; then
    run fp32-perf 900 python bench/step_profile.py --precision fp32 --perf --steps "$PERF_STEPS"
else
    echo "fp32-perf: skipped, Linux perf is not installed" | tee -a "$OUT/summary.txt"
fi
run resnet50-inference 1500 resnet benchmark resnet50 --batch 1,16 --seconds "$SECONDS_" --min-iters 3 --budget 0
run matmul-rates 900 python bench/matmul_rates.py --size "$MM_SIZE" --rounds "$ROUNDS" --onnxruntime
if [ -f "$DATA" ]; then
    run int8-agreement 900 python bench/int8_agreement.py --checkpoint docs/results/2026-12-02-amd-epyc/cifar10_fast-resnet20 \
        --data "$DATA" --images "$IMAGES"
else
    echo "int8-agreement: skipped, no CIFAR-10 JPEGs at $DATA (set DATA=)" | tee -a "$OUT/summary.txt"
fi
if [ "$DEMO" = 1 ]; then
    # GNU time adds the peak memory; minimal images lack it, and run() times the step anyway
    if [ -x /usr/bin/time ]; then run demo 900 /usr/bin/time -v resnet demo; else run demo 900 resnet demo; fi
fi
echo "all steps done; results in $OUT"
