#!/bin/bash
# The demo's student settings, measured on VALID (updates per variant: its `steps`): each variant trains
# in a finished demo run directory (its data, vocab, distilled corpus and teacher are reused) and
# is scored on the valid split with greedy and beam 4 (length penalty 1.0). One seed.
#
#   scripts/demo_student_sweep.sh RUN_DIR OUT_JSON 'NAME MODEL KD [--set K=V ...]' ...
#
# e.g. scripts/demo_student_sweep.sh runs/demo docs/bench/demo_students.json \
#        'cnn_none student_cnn none' 'cnn_none_lr4 student_cnn none --set student_train.learning_rate=0.004'
set -eu
RUN=$1; OUT=$2; shift 2
PY=${PYTHON:-python}; [ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$RUN/sweep"
for spec in "$@"; do
  set -- $spec; name=$1 model=$2 kd=$3; shift 3
  # a variant whose model is there is kept (the demo's own students too: rnn_none, rnn_seq)
  [ -f "$RUN/$name/model.keras" ] || "$PY" -m nmt_kd.cli train -c "$RUN/config.yaml" --run-dir "$RUN" \
      --model "$model" --kd "$kd" --name "$name" --resume "$@" --set student_train.max_minutes=120 \
      >> "$RUN/sweep/$name.log" 2>&1
  for b in 1 4; do
    [ -f "$RUN/sweep/$name.beam$b.json" ] || "$PY" -m nmt_kd.cli evaluate -c "$RUN/config.yaml" \
      --model "$RUN/$name" --src "$RUN/data/valid.src" --ref "$RUN/data/valid.tgt" --beam "$b" \
      --set decode.length_penalty=1.0 --test-set demo/valid --out "$RUN/sweep/$name.beam$b.json" \
      >> "$RUN/sweep/$name.log" 2>&1
  done
  echo "$name|$model|$kd|$*" >> "$RUN/sweep/specs.txt"
  echo "$name: valid greedy $(grep -o '"bleu": [0-9.]*' "$RUN/sweep/$name.beam1.json"), beam 4 $(grep -o '"bleu": [0-9.]*' "$RUN/sweep/$name.beam4.json")"
done
"$PY" - "$RUN" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from nmt_kd.fileio import write_json
run, out = Path(sys.argv[1]), Path(sys.argv[2])
specs = {}  # the last spec of each name wins (a re-run with other settings)
for line in (run / "sweep" / "specs.txt").read_text().splitlines():
    name, model, kd, extra = line.split("|")
    specs[name] = (model, kd, extra)
import sacrebleu
refs = (run / "data" / "valid.tgt").read_text(encoding="utf-8").splitlines()
def length_ratio(json_path):  # hypothesis / reference length (sacreBLEU's), from the hypotheses
    hyps = json_path.with_suffix(".hyp.txt").read_text(encoding="utf-8").splitlines()
    score = sacrebleu.corpus_bleu(hyps, [refs])
    return round(score.sys_len / score.ref_len, 3)
rows = []
for name, (model, kd, extra) in specs.items():
    hist = json.loads((run / name / "train_history.json").read_text())
    ev = hist["evals"][-1] if hist["evals"] else {}
    paths = [run / "sweep" / f"{name}.beam{k}.json" for k in (1, 4)]
    g, b = (json.loads(p.read_text()) for p in paths)
    rows.append({"name": name, "arch": model, "kd": kd, "overrides": extra.split() if extra else [],
                 "params": g.get("params"), "steps": ev.get("step"), "train_loss": ev.get("train_loss"),
                 "valid_loss": ev.get("valid_loss"), "bleu_greedy_valid": g["bleu"],
                 "bleu_beam4_valid": b["bleu"], "chrf_greedy_valid": g["chrf"], "chrf_beam4_valid": b["chrf"],
                 "length_ratio_greedy": length_ratio(paths[0]), "length_ratio_beam4": length_ratio(paths[1]),
                 "length_penalty": b.get("length_penalty"), "bleu_signature": g.get("bleu_signature")})
write_json(out, {"what": "demo students, valid split, one seed each; `steps`: the updates each variant got (the run's student_train.max_steps unless its time cap stopped it first)",
                           "command": "scripts/demo_student_sweep.sh RUN_DIR OUT_JSON " + " ".join(
                               repr(" ".join([n, m, k] + ([e] if e else []))) for n, (m, k, e) in specs.items()),
                           "run_dir": "a finished `nmt-kd pipeline --config configs/demo.yaml` run (seed 1)",
                           "rows": rows})
print(f"wrote {out}: {len(rows)} rows")
PY
