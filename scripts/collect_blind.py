"""Copy the blind test-set translations of a pipeline run into docs/results/blind/.

    python scripts/collect_blind.py --run-dir runs/multi30k_en_de --out docs/results/blind \
        --sources ../shared/data/blind/multi30k/*.en

The evaluate stage writes RUN/eval/<model>/blind/<set>.beam<B>.txt for every source in
`eval.blind_sources`; this names each copy <set>/<row>.seed<k>.beam<B>.txt (the row and seed
of a model directory `rnn_seq.seed2` are rnn_seq and 2; a model without a seed suffix takes
the seed its model.json records; an ensemble joins its members' seeds with '+'). Each copy is
checked to have one line per source line before anything is written.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from nmt_kd.fileio import read_json, read_lines
from nmt_kd.report import split_seed


def seed_label(run: Path, name: str) -> str:
    row, seed = split_seed(name)
    if seed is not None:
        return str(seed)
    model_dir = run / name
    if (model_dir / "ensemble.json").is_file():
        members = read_json(model_dir / "ensemble.json").get("members", [])
        return "+".join(seed_label(run, Path(m).name) for m in members) or "none"
    meta = model_dir / "model.json"
    seed = read_json(meta).get("seed") if meta.is_file() else None
    return "none" if seed is None else str(seed)


def plan(run: Path, out: Path, sources: list[Path]) -> list[tuple[Path, Path]]:
    counts = {s.stem: len(read_lines(s)) for s in sources}
    copies = []
    for f in sorted(run.glob("eval/*/blind/*.beam*.txt")):
        name = f.parent.parent.name
        blind_set, beam = f.name.rsplit(".beam", 1)
        beam = beam.removesuffix(".txt")
        n = len(read_lines(f))
        if blind_set in counts and n != counts[blind_set]:
            raise SystemExit(f"{f}: {n} lines for {counts[blind_set]} source lines")
        row = split_seed(name)[0]
        copies.append((f, out / blind_set / f"{row}.seed{seed_label(run, name)}.beam{beam}.txt"))
    return copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sources", nargs="*", type=Path, default=[],
                    help="the blind source files, to check line counts")
    args = ap.parse_args()
    copies = plan(args.run_dir, args.out, args.sources)
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    print(f"{len(copies)} translation files -> {args.out}")


if __name__ == "__main__":
    main()
