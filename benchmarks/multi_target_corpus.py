"""Experiment (KD table, best-student bar): a seq-KD corpus with up to three targets per source.

For every training source: the ensemble teacher's top-1 translation, its seq-inter pick (the
n-best candidate closest to the reference, as `distill.seq_inter` stores it in the shards)
and the human reference, exact duplicates removed. Reads the shards of a seq-inter
distillation (which keep each line's whole n-best) and writes RUN/distill/train.{src,tgt}
of a separate run directory, whose student is then trained with `--kd seq`:

    python benchmarks/multi_target_corpus.py --inter-run KI --out-run KM
    nmt-kd train -c configs/multi30k_en_de.yaml --run-dir KM --model student_rnn --kd seq \\
        --name rnn_multi.seed1 --set student_train.seed=1 --resume

KM is a copy of KI without its distill/ directory (hard links are fine: nothing here writes
into a linked file). Not a pipeline option: it becomes one if it wins on valid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nmt_kd.distill import read_shard, shard_path, shard_ranges
from nmt_kd.fileio import read_lines, write_json, write_lines


def build(inter_run: Path, out_run: Path, shard_size: int = 2000) -> dict:
    src, ref = read_lines(inter_run / "data/train.src"), read_lines(inter_run / "data/train.tgt")
    if len(ref) != len(src):
        raise SystemExit(f"{inter_run}/data: train.src has {len(src)} lines, train.tgt {len(ref)}")
    # the distillation's own reader: one checked record per source line, shard by shard
    records = [r for i, (start, end) in enumerate(shard_ranges(len(src), shard_size))
               for r in read_shard(shard_path(inter_run, i), start, end)]
    out_src, out_tgt, duplicates, empty = [], [], 0, 0
    for i, s in enumerate(src):
        targets: list[str] = []
        for t in (records[i]["nbest"][0][0], records[i]["hyp"], ref[i]):
            if not t.strip():
                empty += 1
            elif t in targets:
                duplicates += 1
            else:
                targets.append(t)
        out_src += [s] * len(targets)
        out_tgt += targets
    write_lines(out_run / "distill/train.src", out_src)
    write_lines(out_run / "distill/train.tgt", out_tgt)
    manifest = {"what": "top-1 + seq-inter pick + reference per source, exact duplicates removed",
                "source_lines": len(src), "lines": len(out_src), "duplicates_removed": duplicates,
                "empty_targets_skipped": empty}
    write_json(out_run / "distill/manifest.json", manifest)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inter-run", type=Path, required=True, help="run directory of a seq-inter distillation")
    ap.add_argument("--out-run", type=Path, required=True, help="run directory to write distill/ into")
    ap.add_argument("--shard-size", type=int, default=2000, help="the distillation's distill.shard_size")
    a = ap.parse_args()
    print(build(a.inter_run, a.out_run, a.shard_size))


if __name__ == "__main__":
    main()
