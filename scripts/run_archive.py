"""Keep what a run's evaluated models leave behind, without their weights, and put it back.

    python scripts/run_archive.py save    --run-dir RUN --archive docs/archive/multi30k_en_de [NAME ...]
    python scripts/run_archive.py save-corpus --run-dir RUN --archive docs/archive/multi30k_en_de
    python scripts/run_archive.py restore --run-dir RUN --archive docs/archive/multi30k_en_de
    nmt-kd report --run-dir RUN        # the report again, from the evaluation files alone

A long experiment (the KD table: dozens of students, many hours of CPU) outlives the machine
it ran on. For each evaluated model (RUN/eval/<name>/done.json) `save` copies its evaluation
files (metrics JSON, hypotheses, blind-set translations, cached quality estimates) and its
model.json / train_history.json / ensemble.json into ARCHIVE/<name>/, with a manifest of
sha256 hashes; the weights stay behind. `restore` checks each manifest and copies the files
into a run directory (prepared the same way: `nmt-kd pipeline --until vocab`), so `nmt-kd
report` rebuilds the report with every archived model beside the ones trained since. A file
already in the run that differs from the archived one is an error, never overwritten.

`save-corpus` keeps the finished distilled corpus (RUN/distill/train.{src,tgt} and its
manifest.json, gzipped, with the sha256 of each uncompressed file) in ARCHIVE/_distilled_corpus/;
`restore` puts it back, so every seq-KD student of an experiment learns from the same corpus
(a teacher's beam search in bf16 need not give the same bytes on another CPU), and
`nmt-kd pipeline --adopt` then takes it as the run's distill stage instead of distilling again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import sys
from pathlib import Path

from nmt_kd.fileio import atomic_open, read_json, sha256_file, write_json

MODEL_FILES = ("model.json", "train_history.json", "ensemble.json")
CORPUS = "_distilled_corpus"  # ARCHIVE/<this>/: the seq-KD corpus (not a model: no manifest.json)
CORPUS_FILES = ("train.src", "train.tgt", "manifest.json")


def evaluated(run: Path) -> list[str]:
    return sorted(p.parent.name for p in run.glob("eval/*/done.json"))


def save(run: Path, archive: Path, names: list[str]) -> list[str]:
    names = names or evaluated(run)
    if not names:
        raise SystemExit(f"{run / 'eval'}: no evaluated model (no eval/<name>/done.json)")
    for name in names:
        if not (run / "eval" / name / "done.json").is_file():
            raise SystemExit(f"{run / 'eval' / name}: not evaluated (no done.json); nothing saved")
        files = {f"eval/{p.relative_to(run / 'eval' / name)}": p
                 for p in sorted((run / "eval" / name).rglob("*")) if p.is_file()}
        files.update({f"model/{f}": run / name / f for f in MODEL_FILES if (run / name / f).is_file()})
        dst = archive / name
        tmp = archive / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, src in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        write_json(tmp / "manifest.json", {"name": name, "files": {r: sha256_file(tmp / r) for r in files}})
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)  # a model's archive is complete or absent
        print(f"{name}: {len(files)} files -> {dst}")
    return names


def save_corpus(run: Path, archive: Path) -> None:
    src = run / "distill"
    if not (src / "done.json").is_file():
        raise SystemExit(f"{src}: the distill stage has not finished (no done.json); nothing saved")
    tmp, dst = archive / f".{CORPUS}.partial", archive / CORPUS
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in CORPUS_FILES:
        with open(src / f, "rb") as i, gzip.GzipFile(tmp / f"{f}.gz", "wb", mtime=0) as o:
            shutil.copyfileobj(i, o)
    write_json(tmp / "corpus.json", {"files": {f: sha256_file(src / f) for f in CORPUS_FILES}})
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)  # complete or absent
    print(f"distilled corpus: {len(CORPUS_FILES)} files -> {dst}")


def _corpus_plans(run: Path, archive: Path) -> list[tuple[Path, bytes]]:
    d = archive / CORPUS
    if not (d / "corpus.json").is_file():
        return []
    plans = []
    for f, digest in read_json(d / "corpus.json")["files"].items():
        data = gzip.decompress((d / f"{f}.gz").read_bytes())
        if hashlib.sha256(data).hexdigest() != digest:
            raise SystemExit(f"{d / f}.gz: changed since it was archived (corpus.json)")
        dst = run / "distill" / f
        if dst.is_file() and sha256_file(dst) != digest:
            raise SystemExit(f"{dst}: already in the run and different from {d / f}.gz; not overwritten")
        plans.append((dst, data))
    return plans


def restore(run: Path, archive: Path) -> list[str]:
    corpus = _corpus_plans(run, archive)
    plans = []
    for manifest in sorted(archive.glob("*/manifest.json")):
        name = manifest.parent.name
        for rel, digest in read_json(manifest)["files"].items():
            src = manifest.parent / rel
            if not src.is_file() or sha256_file(src) != digest:
                raise SystemExit(f"{src}: missing or changed since it was archived (manifest {manifest})")
            kind, sub = rel.split("/", 1)
            dst = run / "eval" / name / sub if kind == "eval" else run / name / sub
            if dst.is_file() and sha256_file(dst) != digest:
                raise SystemExit(f"{dst}: already in the run and different from {src}; not overwritten")
            plans.append((src, dst))
    for src, dst in plans:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for dst, data in corpus:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(dst, "wb") as f:
            f.write(data)
    names = sorted({p.parent.name for p in archive.glob("*/manifest.json")})
    print(f"{len(names)} models, {len(plans)} files -> {run}"
          + (f"; the distilled corpus -> {run / 'distill'} (`nmt-kd pipeline --adopt` takes it)"
             if corpus else ""))
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("save", "save-corpus", "restore"))
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--archive", required=True, type=Path)
    ap.add_argument("names", nargs="*", help="models to save (default: every evaluated one)")
    args = ap.parse_intermixed_args(argv)  # names after the options too
    if args.action == "save":
        save(args.run_dir, args.archive, args.names)
    elif args.action == "save-corpus":
        if args.names:
            ap.error("save-corpus takes no model names")
        save_corpus(args.run_dir, args.archive)
    else:
        if args.names:
            ap.error("restore takes no model names")
        restore(args.run_dir, args.archive)


if __name__ == "__main__":
    main(sys.argv[1:])
