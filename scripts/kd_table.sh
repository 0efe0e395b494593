#!/bin/bash
# Train every student row of the KD table in docs/benchmarks.md (GRU and CNN students x
# none / word / seq / seq+word, the Transformer student x none / seq, over seeds),
# resumably: a finished row (model.keras present) is skipped,
# an interrupted one continues from its last checkpoint. Two lanes share the machine and one
# queue of rows (a flock per row)
# (on 2 cores, two single-threaded jobs train ~1.3x faster together than one 2-thread job).
#
#   scripts/kd_table.sh lane_a &   scripts/kd_table.sh lane_b &
#
# Needs RUN/teacher and RUN/distill (nmt-kd train --model teacher; nmt-kd distill).
# The jobs run from a frozen copy of nmt_kd/ (autograph re-reads source files, so editing the
# package under a running job can break it).
set -u
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/multi30k_en_de.yaml}
RUN=${RUN:-runs/multi30k_en_de}
SRC_COPY=${SRC_COPY:-$RUN/.nmt_kd_src}
mkdir -p "$RUN/logs"
if [ ! -d "$SRC_COPY/nmt_kd" ]; then mkdir -p "$SRC_COPY" && cp -r nmt_kd "$SRC_COPY/"; fi
PY=${PYTHON:-python}; [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$SRC_COPY" TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=1

# Sessions that end (a machine lent for a few hours, a pre-emptible node): with DEADLINE (epoch
# seconds, e.g. DEADLINE=$(date -d '+2 hours 40 minutes' +%s)) a row not yet begun starts only if
# its estimated minutes end before it (MIN_RNN, MIN_TF, MIN_CNN, and MIN_WORD more for a row
# with word-KD: one lane, one thread, on the 2-core CPU of docs/benchmarks.md, evaluation
# included); a begun row (RUN/<row>/checkpoints) always resumes. With EVAL=1 each trained row is
# evaluated at once by the pipeline (`nmt-kd pipeline --adopt --only ROW`: test and valid,
# greedy and beam, the blind sets), and with ARCHIVE=DIR also archived there
# (scripts/run_archive.py save), so a session keeps every row it finished.
MIN_RNN=${MIN_RNN:-80} MIN_TF=${MIN_TF:-95} MIN_CNN=${MIN_CNN:-60} MIN_WORD=${MIN_WORD:-20}  # word-KD: the top-k store (6.5 min for the ensemble) + slower steps
pipeline_only() {  # name log: the pipeline for this one model (its training if not done, its
  # evaluation), then (ARCHIVE=DIR) its archive copy
  local name=$1 log=$2
  "$PY" -P -m nmt_kd.cli pipeline -c "$CONFIG" --run-dir "$RUN" --adopt --only "$name" \
      >> "$log" 2>&1 || { echo "$name: pipeline failed, see $log"; return 1; }
  if [ -n "${ARCHIVE:-}" ]; then
    "$PY" scripts/run_archive.py save --run-dir "$RUN" --archive "$ARCHIVE" "$name" \
        >> "$log" 2>&1 || { echo "$name: archiving failed, see $log"; return 1; }
  fi
  echo "$name: evaluated$([ -n "${ARCHIVE:-}" ] && echo ", archived in $ARCHIVE") ($(date +%H:%M))"
}
evaluate() {  # name: the pipeline's evaluation of a trained row (EVAL=1), then its archive copy
  [ "${EVAL:-0}" = 1 ] || return 0
  pipeline_only "$1" "$RUN/logs/$1.eval.log"
}
not_to_start() {  # name minutes: true (and says why) when the row is done or must not begin now
  local name=$1 minutes=$2
  # evaluated: done, whether trained here or restored from docs/archive/ on a new machine
  # (scripts/run_archive.py restore: the evaluation without the weights); never trained again
  if [ -f "$RUN/eval/$name/done.json" ]; then echo "$name: done (evaluated)"; return 0; fi
  if [ -n "${DEADLINE:-}" ] && [ ! -f "$RUN/$name/model.keras" ] && [ ! -d "$RUN/$name/checkpoints" ] \
      && [ $(( $(date +%s) + minutes * 60 )) -gt "$DEADLINE" ]; then
    echo "$name: not started (~$minutes min would end after DEADLINE)"; return 0
  fi
  return 1
}
row() {  # name model kd minutes [extra args]: skipped when finished or when another lane holds it
  local name=$1 model=$2 kd=$3 minutes=$4; shift 4
  not_to_start "$name" "$minutes" && return
  if [ -f "$RUN/$name/model.keras" ] && [ "${EVAL:-0}" != 1 ]; then echo "$name: done"; return; fi
  ( flock -n 9 || { echo "$name: taken by the other lane"; exit 0; }
    if [ ! -f "$RUN/$name/model.keras" ]; then
      echo "$name: training ($(date +%H:%M))"
      "$PY" -P -m nmt_kd.cli train -c "$CONFIG" --run-dir "$RUN" --model "$model" --kd "$kd" \
          --name "$name" --resume "$@" >> "$RUN/logs/$name.log" 2>&1 \
        || { echo "$name: failed, see $RUN/logs/$name.log"; exit 0; }
    fi
    evaluate "$name"
  ) 9> "$RUN/logs/$name.lock"
}
spec_row() {  # name minutes: a row trained exactly as its pipeline.students entry in $CONFIG says
  # (its own `train` keys, max_steps, average_last; the seed from the name), by the pipeline
  # itself (`--only NAME`: training, resumed from its checkpoints, then the evaluation)
  local name=$1 minutes=$2
  not_to_start "$name" "$minutes" && return
  ( flock -n 9 || { echo "$name: taken by the other lane"; exit 0; }
    echo "$name: training and evaluating ($(date +%H:%M))"
    pipeline_only "$name" "$RUN/logs/$name.log" || exit 0
  ) 9> "$RUN/logs/$name.lock"
}
word_minutes() {  # kd base: the estimate of a row
  case $1 in *word*) echo $(( $2 + MIN_WORD ));; *) echo "$2";; esac
}
# The CNN rows get 3,000 steps each (the GRU rows 5,000): the same budget within an architecture.
# Every row a claim rests on has three seeds (RUN/<row>.seed<k>, as the pipeline names them);
# the CNN word and seq+word rows one. Seed 1 of every row first, so a partial run is a table.
CNN_STEPS=${CNN_STEPS:-3000}
rnn_row() {  # kd seed: RUN/rnn_<kd>.seed<seed>
  row "rnn_${1/+/}.seed$2" student_rnn "$1" "$(word_minutes "$1" "$MIN_RNN")" --set student_train.seed="$2"
}
tf_row() {  # kd seed: RUN/tf_<kd>.seed<seed>, the Transformer student (6+1 layers), 5,000 updates,
  # the final model the mean of the last 5 checkpoints (pipeline.students[].average_last)
  row "tf_${1/+/}.seed$2" student_transformer "$1" "$(word_minutes "$1" "$MIN_TF")" --set student_train.seed="$2" \
      --set student_train.average_last=5
}
# The Transformer student with the teacher's own training recipe (8,192-token batches, lr 5e-3
# after 2,000 warm-up updates, 7,000 updates, the mean of the last 8 checkpoints 500 apart:
# ~2.8x the tokens of tf_row); its recipe is its pipeline.students entry (`tf_seq_tr`).
MIN_TF_TR=${MIN_TF_TR:-200}
tf_tr_row() {  # kd seed: RUN/tf_<kd>_tr.seed<seed>
  spec_row "tf_${1/+/}_tr.seed$2" "$(word_minutes "$1" "$MIN_TF_TR")"
}
cnn_row() {  # kd seed: RUN/cnn_<kd>.seed<seed>, CNN_STEPS updates
  row "cnn_${1/+/}.seed$2" student_cnn "$1" "$(word_minutes "$1" "$MIN_CNN")" --set student_train.max_steps="$CNN_STEPS" \
      --set student_train.seed="$2"
}
rows() {
  for seed in 1 2 3; do
    for kd in seq none seq+word word; do rnn_row "$kd" "$seed"; done
    for kd in seq none; do tf_row "$kd" "$seed"; done
    for kd in seq none; do cnn_row "$kd" "$seed"; done
    if [ "$seed" = 1 ]; then
      for kd in seq+word word; do cnn_row "$kd" 1; done
    fi
  done
}
# Word-KD's alpha and T are chosen on VALID before its rows train: the GRU student with
# word-KD, seed 1, 2,000 steps, at alpha in {0.5, 0.9} x T in {1, 2} (the teacher's top-8; each T
# its own top-k store). `word_choice` prints each run's best valid BLEU (greedy, the training
# loop's validation); set distill.alpha / distill.temperature in $CONFIG from it, then `rows`.
SWEEP_STEPS=${SWEEP_STEPS:-2000}
word_sweep() {
  for a in 0.5 0.9; do
    for t in 1 2; do
      row "sweep_rnn_word_a${a}_T$t" student_rnn word "$MIN_RNN" --set student_train.max_steps="$SWEEP_STEPS" \
          --set student_train.seed=1 --set distill.alpha="$a" --set distill.temperature="$t"
    done
  done
}
word_choice() {
  "$PY" - "$RUN" <<'PY'
import json, sys
from pathlib import Path
for d in sorted(Path(sys.argv[1]).glob("sweep_rnn_word_*")):
    h = json.loads((d / "train_history.json").read_text()) if (d / "train_history.json").exists() else {}
    evals = [e for e in h.get("evals", []) if e.get("valid_bleu") is not None]
    best = max(evals, key=lambda e: e["valid_bleu"]) if evals else None
    done = (d / "model.keras").exists()
    print(f"{d.name}: " + (f"best valid BLEU {best['valid_bleu']:.2f} at step {best['step']}" if best else "no eval yet")
          + ("" if done else " (still training)"))
PY
}
# The rows that do not depend on word-KD's settings first (every seed), the sweep beside them.
first() {
  for seed in 1 2 3; do
    for kd in seq none; do rnn_row "$kd" "$seed"; cnn_row "$kd" "$seed"; done
    if [ "$seed" = 1 ]; then word_sweep; fi
  done
}
# Then `nmt-kd pipeline -c $CONFIG --run-dir $RUN --adopt` records the finished rows as done
# and evaluates every model (test greedy/beam 5 at batch 1 and 64, valid, the blind sets),
# and writes the report with per-seed means, spreads and Holm-corrected tests.
# Both lanes walk the same queue; a row is trained by whichever lane reaches it first.
# `first`: the rows and the sweep that need no choice; `rows`: all rows (after word_choice).
lane_a() { rows; }
lane_b() { rows; }
"$@"
