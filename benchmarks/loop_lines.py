"""How much BLEU do degenerate (looping) outputs cost the KD table's models?

A loop here is the report's loop flag (`nmt_kd.analysis.find_loop`: an n-gram repeated back to
back) or a character repeated 6+ times in a row ("Tommmmmmmmmel"), which the flag, working on
words, does not see. For every archived row (docs/archive/<run>/<row>/eval/, greedy, batch 64)
and split (valid, test) this counts the loop lines and rescores the hypotheses with each loop
line replaced by the KD teacher ensemble's greedy line: an optimistic bound on what a loop guard
in the search (or filtering loops out of the distilled corpus) could gain. Nothing is chosen
from it.

    python benchmarks/loop_lines.py --archive docs/archive/multi30k_en_de \
        --data RUN/data --out docs/bench/loop_lines.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import sacrebleu

from nmt_kd.analysis import find_loop, words

CHAR_RUN = re.compile(r"(.)\1{5,}")


def loop_lines(hyps: list[str]) -> list[int]:
    return [i for i, h in enumerate(hyps) if CHAR_RUN.search(h) or find_loop(words(h))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="RUN/data with valid.tgt and test.tgt")
    ap.add_argument("--fix-from", default="teacher_ensemble")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    files = {"valid": "valid.beam1.bs64.hyp.txt", "test": "beam1.bs64.hyp.txt"}
    refs = {s: (args.data / f"{s}.tgt").read_text(encoding="utf-8").splitlines() for s in files}
    fixer = {s: (args.archive / args.fix_from / "eval" / f).read_text(encoding="utf-8").splitlines()
             for s, f in files.items()}
    rows = []
    for d in sorted(p for p in args.archive.iterdir() if (p / "eval").is_dir()):
        row = {"row": d.name}
        for split, name in files.items():
            path = d / "eval" / name
            if not path.exists():
                continue
            hyps = path.read_text(encoding="utf-8").splitlines()
            if len(hyps) != len(refs[split]):
                raise SystemExit(f"{path}: {len(hyps)} lines, the {split} references have {len(refs[split])}")
            idx = loop_lines(hyps)
            fixed = list(hyps)
            for i in idx:
                fixed[i] = fixer[split][i]
            row[split] = {"loop_lines": len(idx),
                          "bleu": round(sacrebleu.corpus_bleu(hyps, [refs[split]]).score, 2),
                          "bleu_loops_replaced": round(sacrebleu.corpus_bleu(fixed, [refs[split]]).score, 2)}
        rows.append(row)
        print(json.dumps(row))
    args.out.write_text(json.dumps({
        "what": __doc__.split("\n\n")[0] + " Loop lines per row and split; BLEU (sacreBLEU 13a, "
                "greedy) as archived and with each loop line replaced by the "
                f"{args.fix_from} greedy line (an optimistic bound on a loop guard's gain).",
        "loop": "nmt_kd.analysis.find_loop over words, or the character run " + CHAR_RUN.pattern,
        "command": "python benchmarks/loop_lines.py --archive docs/archive/multi30k_en_de "
                   "--data RUN/data --out docs/bench/loop_lines.json",
        "rows": rows}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
