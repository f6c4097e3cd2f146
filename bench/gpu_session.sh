#!/bin/bash
# Every GPU measurement of issue 17 in one call of a lent GPU (device time is short, ~10 minutes here):
#   1. ResNet-20 training throughput: the bare eager step, the bare compiled step (CUDA graphs, as the
#      trainer compiles it) and the training loop eager and compiled (compile=true), with the whole
#      CIFAR set and its augmentation on the GPU (bench/train_throughput.py --device cuda);
#   2. the paper's ResNet-20 schedule alone on the GPU with compile=true, stopped at PAPER_BUDGET seconds
#      (SIGTERM: it checkpoints; the epochs done and their seconds give the full run's time);
#   3. ResNet-50 training, bf16 + channels_last, eager and compiled, at batch 256 (bench/train_resnet50.py);
#   4. the streamed JPEG loader alone with 2, 8 and 14 worker processes: images/s per decoding core, to say
#      how many cores ResNet-50's step needs (bench/stream_loader.py);
#   5. with SIDE_BY_SIDE=1 (when time is left): the degradation experiment, four runs at once (--jobs 4);
#   6. a check, not a timing: gradient accumulation with the compiled step (accum_steps=2 compile=true, one
#      epoch), never run on a GPU: CUDA graphs replay one graph per chunk, and chunk 1's logits (kept for the
#      metrics) may be overwritten by chunk 2's replay. rc and the log's last lines say whether it holds.
# Usage (repo root, the CIFAR archive copied into the ignored .devdata/):
#   bash bench/gpu_session.sh            # on the device: results in $OUT/gpu-results.tar.gz
#   PY=/work/main/.venv/bin/python DATA=digits DEVICE=cpu PAPER_BUDGET=20 R50=0 STREAM=0 STEPS=5 \
#     THROUGHPUT_ARGS=--skip-compile EXTRA="data.val_size=150 compile=false" \
#     WORK=/tmp/gpu-smoke OUT=/tmp/gpu-smoke-out bash bench/gpu_session.sh   # a CPU smoke test of the script
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
DATA=${DATA:-.devdata/cifar10-train-jpg.tar.gz}
WORK=${WORK:-.devwork}
RESULTS=${OUT:-/tmp/gpu-out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-200}
PAPER_BUDGET=${PAPER_BUDGET:-240}
R50=${R50:-1}
STREAM=${STREAM:-1}
SIDE_BY_SIDE=${SIDE_BY_SIDE:-0}
DEG_EPOCHS=${DEG_EPOCHS:-30}
EXTRA=${EXTRA:-}  # key=value overrides for every run (a smoke test shrinks the hold-out)
mkdir -p "$WORK" "$RESULTS"
# A second call in the same WORK must not summarise the first call's runs (resnet train refuses a used --out)
rm -rf "$WORK/paper-r20" "$WORK/accum" "$WORK/degradation"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

{ nvidia-smi -L 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; nproc
  lscpu | grep "Model name"; } > "$WORK/machine.txt" 2>&1
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

# 1. ResNet-20 throughput, alone on the GPU (target: the compiled loop >= 2x the bare eager step).
timeout 300 $PY bench/train_throughput.py --device "$DEVICE" --steps "$STEPS" --repeats 3 ${THROUGHPUT_ARGS:-} \
  > "$WORK/throughput.txt" 2>&1
tail -14 "$WORK/throughput.txt"; echo "t=$(elapsed)s throughput done"

# 2. The paper's schedule, compiled (target: <= 3 minutes for the 64k iterations).
$PY -m resnet train --recipe cifar10_paper --model resnet20 --data "$DATA" --out "$WORK/paper-r20" \
  compile=true eval_every=10 $EXTRA > "$WORK/paper-r20.log" 2>&1 &
paper=$!
waited=0
while kill -0 $paper 2>/dev/null && [ "$waited" -lt "$PAPER_BUDGET" ]; do sleep 2; waited=$((waited + 2)); done
kill -0 $paper 2>/dev/null && kill -TERM $paper  # it checkpoints and stops: resumable
wait $paper
paper_rc=$?  # 0 (finished) or 143 (stopped at the budget, checkpointed) are both fine
[ "$paper_rc" = 0 ] || [ "$paper_rc" = 143 ] || { echo "paper-r20 failed, rc $paper_rc:"; tail -5 "$WORK/paper-r20.log"; }
$PY - "$WORK/paper-r20/metrics.jsonl" <<'EOF' | tee "$WORK/paper-r20.summary"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
if rows:
    steady = rows[1:] or rows  # the first epoch holds the compilation
    per_epoch = sum(r["seconds"] for r in steady) / len(steady)
    compile_s = rows[0].get("compile_seconds", 0)
    print(f"paper-r20: {len(rows)} epochs, first {rows[0]['seconds']:.1f} s (compile {compile_s:.1f} s), then "
          f"{per_epoch:.2f} s an epoch ({rows[-1]['images_per_sec']:,.0f} img/s): 182 epochs ~ "
          f"{(compile_s + 182 * per_epoch) / 60:.1f} min; last val err {[r['val_err'] for r in rows if r.get('val_err') is not None][-1:]}")
else:
    print("paper-r20: no epoch finished")
EOF
echo "t=$(elapsed)s paper schedule done"

# 3. ResNet-50, bf16 + channels_last, eager and compiled (target: >= 3,000 images/s on an H100/H200).
if [ "$R50" = 1 ]; then
  timeout 300 $PY bench/train_resnet50.py --gpu-only --compile --gpu-batch 256 --gpu-steps 30 \
    > "$WORK/resnet50.txt" 2>&1
  cat "$WORK/resnet50.txt"; echo "t=$(elapsed)s resnet50 done"
fi

# 4. The streamed loader: images/s with 2, 8 and 14 decoding processes (the rest of 16 cores feed the GPU).
if [ "$STREAM" = 1 ]; then
  for w in 2 8 14; do
    # batch 64: the clock starts after the 1 + 4 x workers batches decoded ahead, then times 30 (stream_loader.py)
    timeout 180 $PY bench/stream_loader.py --data "$DATA" --workers $w --batch 64 --batches 30 --loader-only \
      > "$WORK/stream-w$w.txt" 2>&1
    echo "workers $w:"; tail -6 "$WORK/stream-w$w.txt"
  done
  echo "t=$(elapsed)s stream loader done"
fi

# 5. Several small runs on one GPU at once.
if [ "$SIDE_BY_SIDE" = 1 ]; then
  export OMP_NUM_THREADS=2
  timeout 300 $PY -m resnet experiment degradation --depths 20,56 --epochs "$DEG_EPOCHS" --jobs 4 --data "$DATA" \
    --out "$WORK/degradation" compile=true $EXTRA > "$WORK/degradation.log" 2>&1
  tail -12 "$WORK/degradation.log"; echo "t=$(elapsed)s degradation done"
fi

# 6. Gradient accumulation through the compiled step (CUDA graphs), one epoch.
if [ "${ACCUM:-1}" = 1 ]; then
  timeout 240 $PY -m resnet train --recipe cifar10_paper --model resnet20 --data "$DATA" --out "$WORK/accum" \
    --epochs 1 accum_steps=2 compile=true $EXTRA > "$WORK/accum.log" 2>&1
  echo "accum_steps=2 compile=true: rc $?"; tail -3 "$WORK/accum.log"; echo "t=$(elapsed)s accumulation check done"
fi

tar czf "$RESULTS/gpu-results.tar.gz" --exclude='*.safetensors' --exclude='*.pt' -C "$WORK" .
echo "t=$(elapsed)s done"
