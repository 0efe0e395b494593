"""Time the report's distillation-gap analysis: 9 models x 1,000 sentences.

Builds a run directory in a temporary folder: Multi30k (../shared/data/multi30k: train.en/de as
the training data, test_2016_flickr as the test set) when it is there, else a generated toy
corpus; a SentencePiece model; nine tiny untrained models (a Transformer teacher, four RNN and
four CNN students) so that the quality estimate really runs each model over its output; and
nine hypothesis files made from the references with word drops, swaps, loops, copies and
empty lines. Then times `nmt_kd.analysis.analyze_run` (everything the report computes for the
analysis: sentence chrF, flags with language identification, bucket BLEU with 1,000 bootstrap
resamples, QE with each model, markdown and HTML) with and without the QE step.

    python benchmarks/bench_analysis.py [--sentences 1000] [--models 9] [--out bench.json]

Building the run (tokenizer, models) is not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nmt_kd.fileio import read_lines, write_json, write_lines  # noqa: E402

MULTI30K = REPO.parent / "shared" / "data" / "multi30k"
TINY = {"vocab": {"size": 2000},
        "model": {"max_positions": 256,
                  "teacher": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "heads": 2,
                              "ff_dim": 64, "dropout": 0.0},
                  "student_rnn": {"embed_dim": 16, "hidden": 16},
                  "student_cnn": {"embed_dim": 16, "hidden": 16, "encoder_layers": 2,
                                  "decoder_layers": 2}}}


def corpus(n_test: int) -> tuple[list[str], list[str], list[str], list[str], str]:
    if (MULTI30K / "train.en").is_file():
        test_src = read_lines(MULTI30K / "test_2016_flickr.en")
        test_tgt = read_lines(MULTI30K / "test_2016_flickr.de")
        while len(test_src) < n_test:
            test_src, test_tgt = test_src * 2, test_tgt * 2
        return (read_lines(MULTI30K / "train.en"), read_lines(MULTI30K / "train.de"),
                test_src[:n_test], test_tgt[:n_test], "Multi30k")
    rng = random.Random(0)
    en = "the a dog cat man woman runs sits red big small house street ball plays with".split()
    de = "der ein Hund Katze Mann Frau rennt sitzt rote große kleine Haus Straße Ball spielt mit".split()
    pairs = []
    for _ in range(20000 + n_test):
        idx = [rng.randrange(len(en)) for _ in range(rng.randint(3, 25))]
        pairs.append((" ".join(en[i] for i in idx) + ".", " ".join(de[i] for i in idx) + "."))
    src, tgt = [s for s, _ in pairs], [t for _, t in pairs]
    return src[:20000], tgt[:20000], src[20000:], tgt[20000:], "generated toy corpus"


def hypotheses(srcs: list[str], refs: list[str], k: int) -> list[str]:
    """A system's output: the reference with errors that grow with k, and a few defects."""
    rng = random.Random(k)
    out = []
    for src, ref in zip(srcs, refs, strict=True):
        toks = [w for w in ref.split() if rng.random() > 0.05 + 0.04 * k]
        if len(toks) > 2 and rng.random() < 0.2:
            i = rng.randrange(len(toks) - 1)
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        roll = rng.random()
        if roll < 0.01:
            toks = toks + toks[-2:] * 4  # a loop
        elif roll < 0.015:
            toks = src.split()  # a copy
        elif roll < 0.02:
            toks = []
        out.append(" ".join(toks))
    return out


def build_run(root: Path, n_sentences: int, n_models: int, shapes: str | None = None) -> tuple[Path, str]:
    from nmt_kd.config import config_from_dict
    from nmt_kd.models.persistence import save_model_dir
    from nmt_kd.models.registry import build_model
    from nmt_kd.tokenizer import Tokenizer, train_tokenizer

    run = root / "run"
    train_src, train_tgt, test_src, test_tgt, name = corpus(n_sentences)
    for split, (s, t) in {"train": (train_src, train_tgt), "test": (test_src, test_tgt)}.items():
        write_lines(run / f"data/{split}.src", s)
        write_lines(run / f"data/{split}.tgt", t)
    if shapes:  # the models of a real config (untrained: QE's cost does not depend on training)
        from nmt_kd.config import load_config

        real = load_config(shapes)
        cfg = config_from_dict({"vocab": {"size": real.vocab.size}})
        cfg = dataclasses.replace(cfg, model=real.model)
    else:
        cfg = config_from_dict(TINY)
    tok = Tokenizer(train_tokenizer(cfg.vocab, run / "data/train.src", run / "data/train.tgt",
                                    run / "vocab"))
    archs = ["teacher"] + ["student_rnn", "student_cnn"] * n_models
    for k, arch in enumerate(archs[:n_models]):
        model_name = "teacher" if k == 0 else f"{arch}_{k}"
        model = build_model(arch, cfg.model, tok.vocab_size)
        save_model_dir(model, run / model_name, tok, {"model_type": arch, "kd": "none"})
        write_json(run / f"eval/{model_name}/beam1.bs64.json",
                   {"model": str(run / model_name), "beam": 1, "batch_size": 64})
        write_lines(run / f"eval/{model_name}/beam1.bs64.hyp.txt", hypotheses(test_src, test_tgt, k))
    return run, name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--models", type=int, default=9)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", help="JSON with the timings")
    parser.add_argument("--shapes", metavar="CONFIG",
                        help="build the models with this config's model section and vocabulary "
                        "size (e.g. configs/multi30k_en_de.yaml) instead of tiny ones")
    args = parser.parse_args()

    from nmt_kd.analysis import analyze_run, detect_wrong_language
    from nmt_kd.report import load_rows

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run, data = build_run(Path(tmp), args.sentences, args.models, args.shapes)
        print(f"built the run ({data}) in {time.perf_counter() - t0:.1f}s (not timed)")
        rows = load_rows(run)
        timings = {}
        for label, qe in (("with QE (models loaded and run)", True), ("without QE", False)):
            detect_wrong_language.cache_clear()  # each timing starts cold
            t0 = time.perf_counter()
            md, page, result = analyze_run(run, rows, args.bootstrap, log=lambda _m: None, qe=qe)
            timings[label] = round(time.perf_counter() - t0, 2)
            print(f"{args.models} models x {args.sentences} sentences, {label}: "
                  f"{timings[label]:.2f}s ({len(page) / 2**20:.1f} MiB of HTML)")
    if args.out:
        write_json(args.out, {"data": data, "models": args.models, "sentences": args.sentences,
                              "shapes": args.shapes or "tiny",
                              "bootstrap": args.bootstrap, "seconds": timings,
                              "cpus": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
