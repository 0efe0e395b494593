#!/usr/bin/env python3
"""The KD table of docs/benchmarks.md from the committed evaluation and bench JSON files.

    python scripts/kd_table.py --results docs/results/multi30k --bench docs/bench/bench_kd_table.json

One row per model found as RESULTS/NAME.beam1.bs64.json (teacher first, then the GRU and the
CNN students in the order none, word, seq, seq+word): sacreBLEU greedy and beam 5, chrF and
TER (greedy), parameters, size on disk, and greedy sentences/s at batch 1 and 64 from one
`nmt-kd bench` run with each model's ratio to the teacher's beam 5 in that same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ["teacher"] + [f"{a}_{k}" for a in ("rnn", "cnn") for k in ("none", "word", "seq", "seqword")]


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def speeds(bench: dict | None) -> dict:
    """{(name, beam, batch): sentences/s} from a bench JSON (model dirs named by their leaf)."""
    if not bench:
        return {}
    return {(Path(r["model"]).name, r["beam"], r["batch_size"]): r["sentences_per_second"]
            for r in bench["rows"]}


def table(results: Path, bench: dict | None) -> str:
    sp = speeds(bench)
    ref = {bs: sp.get(("teacher", 5, bs)) for bs in (1, 64)}
    head = ["model", "kd", "params", "size", "BLEU greedy", "BLEU beam 5", "chrF greedy",
            "TER greedy", "sent/s greedy bs 1", "sent/s greedy bs 64"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in ORDER:
        g, b = load(results / f"{name}.beam1.bs64.json"), load(results / f"{name}.beam5.bs64.json")
        if g is None:
            continue

        def speed(bs: int, name=name) -> str:
            v = sp.get((name, 1, bs))
            if v is None:
                return "-"
            return f"{v:,.1f} ({v / ref[bs]:.2f}x)" if ref.get(bs) else f"{v:,.1f}"

        arch = {"teacher": "teacher (Transformer)", "student_rnn": "GRU student",
                "student_cnn": "CNN student"}.get(g["model_type"], g["model_type"])
        lines.append("| " + " | ".join([
            arch, g["kd"], f"{g['params']:,}", f"{g['size_bytes'] / 1e6:.1f} MB",
            f"{g['bleu']:.2f}", f"{b['bleu']:.2f}" if b else "-", f"{g['chrf']:.2f}",
            f"{g['ter']:.2f}", speed(1), speed(64)]) + " |")
    if ref.get(1):
        lines.append(f"\nSpeeds: one `nmt-kd bench` run; in brackets the ratio to the teacher's "
                     f"beam 5 in the same run ({ref[1]:.1f} sent/s at batch 1, {ref[64]:.1f} at batch 64).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="docs/results/multi30k")
    p.add_argument("--bench", help="an `nmt-kd bench --out` JSON with the teacher and the students")
    args = p.parse_args()
    print(table(Path(args.results), load(Path(args.bench)) if args.bench else None))


if __name__ == "__main__":
    main()
