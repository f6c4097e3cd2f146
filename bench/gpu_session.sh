#!/bin/bash
# Every GPU measurement of issues 3 and 4 in one call of a lent GPU (device time is short):
#   1. training throughput of ResNet-20 (bench/train_throughput.py --device cuda), alone on the GPU;
#   2. side by side: cifar10_paper ResNet-20, cifar10_fast ResNet-20, cifar10_fast with the CIFAR-style
#      ResNet-18 (the route to 94%), and the degradation experiment (plain/ResNet 20 and 56, --jobs 4);
#   3. at BUDGET seconds every run still going is stopped with SIGTERM (it checkpoints: resumable);
#   4. the responses experiment on the degradation checkpoints, then one tarball of the results.
# Usage (repo root, the CIFAR archive copied into the ignored .devdata/):
#   bash bench/gpu_session.sh            # on the device: results in $OUT/gpu-results.tar.gz
#   PY=.venv/bin/python DATA=digits EXTRA=data.val_size=300 PAPER_EPOCHS=1 FAST_EPOCHS=1 R18_EPOCHS=1 DEG_EPOCHS=1 BUDGET=300 \
#     WORK=/tmp/gpu-smoke OUT=/tmp/gpu-smoke-out bash bench/gpu_session.sh   # a CPU smoke test
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
DATA=${DATA:-.devdata/cifar10-train-jpg.tar.gz}
WORK=${WORK:-.devwork}
RESULTS=${OUT:-/tmp/gpu-out}
BUDGET=${BUDGET:-480}
PAPER_EPOCHS=${PAPER_EPOCHS:-182}
FAST_EPOCHS=${FAST_EPOCHS:-15}
R18_EPOCHS=${R18_EPOCHS:-30}
DEG_EPOCHS=${DEG_EPOCHS:-30}
DEG_JOBS=${DEG_JOBS:-4}
EXTRA=${EXTRA:-}  # key=value overrides for every run (the smoke test shrinks the hold-out)
mkdir -p "$WORK" "$RESULTS"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

{ nvidia-smi -L 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; nproc; } \
  > "$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"

# Decode the JPEGs once into the cache that every run below reads.
$PY - "$DATA" $EXTRA <<'EOF' > "$WORK/cache.log" 2>&1
import sys, time
from resnet.config import make_config
from resnet.engine.trainer import split_train_val
t = time.perf_counter()
train, val = split_train_val(make_config("cifar10_paper", [f"data.path={sys.argv[1]}", *sys.argv[2:]]))
print(f"decoded/cached {len(train)} + {len(val) if val else 0} images in {time.perf_counter() - t:.1f} s")
EOF
cat "$WORK/cache.log"; echo "t=$(elapsed)s cache ready"

if [ "$DATA" != digits ]; then
  timeout 120 $PY bench/train_throughput.py --device "${DEVICE:-cuda}" --steps 200 --repeats 3 \
    > "$WORK/throughput.txt" 2>&1
  tail -8 "$WORK/throughput.txt"; echo "t=$(elapsed)s throughput done"
fi

# Seven processes share 16 cores below: 2 threads each (spinning OpenMP threads of oversubscribed
# processes slow small-tensor work many times over).
export OMP_NUM_THREADS=2
R18="model=resnet18 model_args.stem=cifar model_args.stem_width=64"
$PY -m resnet train --recipe cifar10_paper --model resnet20 --data "$DATA" --out "$WORK/paper-r20" \
  --epochs "$PAPER_EPOCHS" $EXTRA > "$WORK/paper-r20.log" 2>&1 &
$PY -m resnet train --recipe cifar10_fast --data "$DATA" --out "$WORK/fast-r20" --epochs "$FAST_EPOCHS" \
  eval_every=1 $EXTRA > "$WORK/fast-r20.log" 2>&1 &
$PY -m resnet train --recipe cifar10_fast --data "$DATA" --out "$WORK/fast-r18" --epochs "$R18_EPOCHS" \
  eval_every=1 $R18 $EXTRA > "$WORK/fast-r18.log" 2>&1 &
$PY -m resnet experiment degradation --depths 20,56 --epochs "$DEG_EPOCHS" --jobs "$DEG_JOBS" --data "$DATA" \
  --out "$WORK/degradation" $EXTRA > "$WORK/degradation.log" 2>&1 &

while [ -n "$(jobs -r)" ] && [ "$(elapsed)" -lt "$BUDGET" ]; do sleep 5; done
if [ -n "$(jobs -r)" ]; then
  echo "t=$(elapsed)s budget reached: stopping the runs still going (they checkpoint)"
  pkill -TERM -f "resnet (train|experiment)"
fi
wait
echo "t=$(elapsed)s runs ended"

if [ -f "$WORK/degradation/report.md" ]; then
  timeout 60 $PY -m resnet experiment responses --checkpoints "$WORK"/degradation/runs/* --data "$DATA" \
    --out "$WORK/responses" > "$WORK/responses.log" 2>&1
fi

# Summaries: the last metrics line of each run, and the reports.
for m in "$WORK"/*/metrics.jsonl "$WORK"/degradation/runs/*/metrics.jsonl; do
  [ -f "$m" ] && echo "$m: $(wc -l < "$m") epochs: $(tail -1 "$m")"
done > "$WORK/summary.txt"
cat "$WORK/summary.txt"
tail -25 "$WORK/degradation/report.md" "$WORK/responses/report.md" 2>/dev/null
tar czf "$RESULTS/gpu-results.tar.gz" --exclude='*.safetensors' --exclude='*.pt' -C "$WORK" .
echo "t=$(elapsed)s done"
