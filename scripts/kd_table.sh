#!/bin/bash
# Train every student row of the KD table in docs/benchmarks.md (GRU and CNN students x
# none / word / seq / seq+word), resumably: a finished row (model.keras present) is skipped,
# an interrupted one continues from its last checkpoint. Two lanes share the machine
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
export PYTHONPATH="$SRC_COPY" TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-1} TF_NUM_INTEROP_THREADS=1

row() {  # name model kd
  if [ -f "$RUN/$1/model.keras" ]; then echo "$1: done"; return; fi
  python -P -m nmt_kd.cli train -c "$CONFIG" --run-dir "$RUN" --model "$2" --kd "$3" --name "$1" \
      --resume >> "$RUN/logs/$1.log" 2>&1 || echo "$1: failed, see $RUN/logs/$1.log"
}
lane_a() { row rnn_seq student_rnn seq; row rnn_seqword student_rnn seq+word; row cnn_seq student_cnn seq; row cnn_seqword student_cnn seq+word; }
lane_b() { row rnn_none student_rnn none; row rnn_word student_rnn word; row cnn_none student_cnn none; row cnn_word student_cnn word; }
"$@"
