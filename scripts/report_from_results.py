"""Rebuild a pipeline report from committed evaluation results, without the models.

    python scripts/report_from_results.py --metrics docs/reports/multi30k_en_de_f9d6349/metrics.json \
        --hyps docs/results/multi30k --run-dir RUN --title "..."

RUN must hold the run's data/ and vocab/ (`nmt-kd prepare` reproduces them: the same corpus
and config give the same files). Every evaluation row of the old metrics.json (its `rows`, or
`evaluations` in the current format) is written back as RUN/eval/<model>/beam<B>.bs<N>.json,
with the hypotheses the row scored (`scored_batch_size`) from HYPS/<model>.beam<B>.bs<N>.hyp.txt;
then `nmt-kd report` runs on RUN. What needs the models (the analysis's quality estimate) is
left out and said so in the report.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from nmt_kd.fileio import read_json, read_lines, write_json
from nmt_kd.report import build_report


def restore_evaluations(metrics: Path, hyps: Path, run: Path) -> int:
    old = read_json(metrics)
    rows = old.get("evaluations") or old["rows"]
    for row in rows:
        name = row["name"]
        bs = row.get("scored_batch_size", row["batch_size"])
        src = hyps / f"{name}.beam{row['beam']}.bs{bs}.hyp.txt"
        if len(read_lines(src)) != row["n_sentences"]:
            raise SystemExit(f"{src}: {len(read_lines(src))} lines for {row['n_sentences']} sentences")
        prefix = "valid." if row.get("split") == "valid" else ""
        out = run / "eval" / name / f"{prefix}beam{row['beam']}.bs{row['batch_size']}.json"
        write_json(out, {k: v for k, v in row.items() if k not in ("name", "hyp_file", "row", "seed")})
        shutil.copyfile(src, out.with_suffix(".hyp.txt"))
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", required=True, type=Path)
    ap.add_argument("--hyps", required=True, type=Path)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--title", default="nmt-kd report")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    n = restore_evaluations(args.metrics, args.hyps, args.run_dir)
    print(f"{n} evaluation rows restored under {args.run_dir / 'eval'}")
    build_report(args.run_dir, title=args.title, bootstrap=args.bootstrap)


if __name__ == "__main__":
    main()
