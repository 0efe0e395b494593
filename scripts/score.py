#!/usr/bin/env python3
"""Score a translation file against references: sacreBLEU BLEU, chrF and TER with signatures.

    python scripts/score.py HYP REF [--baseline OTHER_HYP ...] [--bootstrap 1000] [--json OUT]

With `--baseline`, sacreBLEU's paired bootstrap test compares HYP with each baseline system on
the same references (p-value of "HYP differs from the baseline by chance"). Files are read
strictly (UTF-8, one sentence per line); a line-count mismatch is an error, never a silent
truncation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from nmt_kd.errors import UserError
    from nmt_kd.evaluate import score
    from nmt_kd.fileio import read_lines, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("hyp", help="translations, one per line")
    p.add_argument("ref", help="references, line-aligned with HYP")
    p.add_argument("--baseline", action="append", default=[], metavar="HYP",
                   help="another system's translations for a paired bootstrap test (repeatable)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--json", help="write the scores as JSON here")
    args = p.parse_args(argv)
    try:
        hyps, refs = read_lines(args.hyp), read_lines(args.ref)
        if len(hyps) != len(refs):
            raise UserError(f"{args.hyp} has {len(hyps)} lines but {args.ref} has {len(refs)}")
        result = {"hyp": args.hyp, "ref": args.ref, "sentences": len(refs), **score(hyps, refs)}
        print(f"{Path(args.hyp).name}: BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  "
              f"TER {result['ter']:.2f}  ({len(refs)} sentences)")
        for key in ("bleu", "chrf", "ter"):
            print(f"  {key}: {result[key + '_signature']}")
        result["paired_bootstrap"] = []
        for other_path in args.baseline:
            other = read_lines(other_path)
            if len(other) != len(refs):
                raise UserError(f"{other_path} has {len(other)} lines but {args.ref} has {len(refs)}")
            from sacrebleu.metrics import BLEU
            from sacrebleu.significance import PairedTest

            test = PairedTest([(other_path, other), (args.hyp, hyps)], {"BLEU": BLEU()}, [refs],
                              test_type="bs", n_samples=args.bootstrap)
            _, res = test()
            base, mine = res["BLEU"]
            row = {"baseline": other_path, "baseline_bleu": round(base.score, 2),
                   "bleu": round(mine.score, 2), "p_value": round(float(mine.p_value), 4)}
            result["paired_bootstrap"].append(row)
            print(f"  vs {other_path}: {row['bleu']:.2f} vs {row['baseline_bleu']:.2f} BLEU, "
                  f"p = {row['p_value']:.4f} (paired bootstrap, {args.bootstrap} resamples)")
        if args.json:
            write_json(args.json, result)
    except UserError as e:
        print(f"score.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
