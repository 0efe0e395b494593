#!/usr/bin/env python3
"""Prepare a parallel corpus for nmt-kd outside a full pipeline: clean, filter, split, train
the joint SentencePiece model, and write a config that the other commands can continue from.

    python scripts/prepare_corpus.py SRC TGT --run-dir runs/my_corpus \\
        [--valid-src F --valid-tgt F] [--test-src F --test-tgt F] [--src-lang en --tgt-lang de] \\
        [--test-size 1000] [--vocab-size 8000] [--on-bad-line skip] [--base-config configs/multi30k_en_de.yaml]

Plain or .gz text files, one sentence per line, line-aligned. Without --valid-*/--test-*,
seeded held-out splits are cut from the training data. Writes RUN/data/{train,valid,test}.*
with a manifest of what was kept and skipped, RUN/vocab/spm.model, and RUN/config.yaml (the
base config with this corpus in its data section): continue step by step with
`nmt-kd train --config RUN/config.yaml --run-dir RUN --model teacher`, `nmt-kd distill ...`, or
with `nmt-kd pipeline --config RUN/config.yaml` (which records its own prepare and vocab stages).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from nmt_kd.config import config_from_dict, config_to_dict, load_config, save_config
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.errors import UserError
    from nmt_kd.tokenizer import build_vocab

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("tgt")
    p.add_argument("--run-dir", required=True)
    for split in ("valid", "test"):
        p.add_argument(f"--{split}-src")
        p.add_argument(f"--{split}-tgt")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--valid-size", type=int, help="held-out pairs when no --valid-* files")
    p.add_argument("--test-size", type=int, help="held-out pairs when no --test-* files")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--on-bad-line", choices=["error", "skip"])
    p.add_argument("--base-config", help="config to start from (default: the built-in defaults)")
    args = p.parse_args(argv)
    try:
        tree = config_to_dict(load_config(args.base_config))
        data = tree["data"]
        data.update(source="files", train_src=str(Path(args.src).resolve()),
                    train_tgt=str(Path(args.tgt).resolve()), path=None, hf_name=None)
        for split in ("valid", "test"):
            s, t = getattr(args, f"{split}_src"), getattr(args, f"{split}_tgt")
            if (s is None) != (t is None):
                raise UserError(f"--{split}-src and --{split}-tgt go together")
            data[f"{split}_src"] = str(Path(s).resolve()) if s else None
            data[f"{split}_tgt"] = str(Path(t).resolve()) if t else None
        for key, value in (("src_lang", args.src_lang), ("tgt_lang", args.tgt_lang),
                           ("on_bad_line", args.on_bad_line), ("valid_size", args.valid_size),
                           ("test_size", args.test_size)):
            if value is not None:
                data[key] = value
        if args.vocab_size:
            tree["vocab"]["size"] = args.vocab_size
        run = Path(args.run_dir)
        tree.setdefault("pipeline", {})["run_dir"] = str(run)
        cfg = config_from_dict(tree, source="prepare_corpus.py")
        manifest = prepare_data(cfg, run)
        build_vocab(cfg.vocab, run)
        save_config(cfg, run / "config.yaml")
    except UserError as e:
        print(f"prepare_corpus.py: error: {e}", file=sys.stderr)
        return 2
    print(f"prepared {run}: pairs {manifest['counts']}, skipped while reading "
          f"{manifest['read']['skipped'] or 'none'}, removed from train "
          f"{manifest.get('removed_from_train') or 'none'}")
    print(f"config: {run / 'config.yaml'}; next: nmt-kd train --config {run / 'config.yaml'} "
          f"--run-dir {run} --model teacher")
    return 0


if __name__ == "__main__":
    sys.exit(main())
