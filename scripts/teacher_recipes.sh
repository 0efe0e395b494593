#!/bin/bash
# Teacher recipe candidates for the KD table (Multi30k en-de), chosen on valid only: each runs
# with one intra-op thread beside the other, resumably (a killed run continues from its last
# checkpoint when started again), from a frozen copy of the source.
#
#   RUN=/work/runs/m30k scripts/teacher_recipes.sh A &  RUN=/work/runs/m30k scripts/teacher_recipes.sh B &
#
#   A: today's shape (pre-norm, 3+3 layers, d_model 256, FFN 1024, dropout 0.3), lr 1e-3 with
#      1,000 warm-up steps, batches of 4,096 tokens, 10,000 updates (1h55m alone on this machine
#      at 1.455 updates/s with two threads; 0.795/s with one)
#   B: Wu et al. 2021's transformer_tiny recipe (4+4 layers, d_model 128, FFN 256, 4 heads,
#      dropout 0.3, lr 5e-3 with 2,000 warm-up steps, 8,192-token batches, 8,000 updates)
# Both validate (greedy BLEU on valid) every 1,000 updates and keep 10 checkpoints 500 apart,
# for checkpoint averaging afterwards (`nmt-kd average`), chosen on valid.
set -u
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/multi30k_en_de.yaml}
RUN=${RUN:-runs/multi30k_en_de}
SRC_COPY=${SRC_COPY:-$RUN/.nmt_kd_src}
mkdir -p "$RUN/logs"
if [ ! -d "$SRC_COPY/nmt_kd" ]; then mkdir -p "$SRC_COPY" && cp -r nmt_kd "$SRC_COPY/"; fi
PY=${PYTHON:-python}; [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$SRC_COPY" TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=1
[ -f "$RUN/vocab/spm.model" ] || "$PY" -m nmt_kd.cli prepare -c "$CONFIG" --run-dir "$RUN"
common=(--set train.max_minutes=600 --set train.eval_every=1000 --set train.checkpoint_every=500
        --set train.keep_checkpoints=10 --set train.seed="${SEED:-1}")
case "$1" in
  A) recipe=(--set train.max_steps=10000) ;;
  B) recipe=(--set train.max_steps=8000 --set train.max_tokens=8192 --set train.learning_rate=0.005
             --set train.warmup_steps=2000 --set model.teacher.d_model=128
             --set model.teacher.encoder_layers=4 --set model.teacher.decoder_layers=4
             --set model.teacher.ff_dim=256 --set model.teacher.heads=4
             --set model.teacher.attention_dropout=0.0) ;;
  *) echo "usage: $0 A|B" >&2; exit 2 ;;
esac
name="teacher_$1${SEED:+_s$SEED}"
resume=(); [ -d "$RUN/$name/checkpoints" ] && resume=(--resume)
exec "$PY" -m nmt_kd.cli train -c "$CONFIG" --run-dir "$RUN" --model teacher --name "$name" \
    "${resume[@]}" "${common[@]}" "${recipe[@]}" >> "$RUN/logs/$name.log" 2>&1
