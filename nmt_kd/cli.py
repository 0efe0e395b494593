"""The `nmt-kd` command line: one subcommand per job, each loads the config and calls one function.

A user's mistake (bad config, bad corpus, missing file) is printed as one sentence on stderr
with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# TensorFlow's C++ start-up chatter is noise for a command-line user (shown with -v).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nmt_kd import __version__  # noqa: E402
from nmt_kd.errors import UserError  # noqa: E402


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="experiment YAML file")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set train.max_steps=100",
    )


def _load(args) -> object:
    from nmt_kd.config import load_config

    return load_config(args.config, args.overrides)


def _run_dir(args, cfg) -> Path:
    return Path(args.run_dir or cfg.pipeline.run_dir)


def cmd_prepare(args) -> int:
    from nmt_kd.config import config_from_dict, config_to_dict
    from nmt_kd.data.prepare import prepare_data
    from nmt_kd.tokenizer import build_vocab

    if args.src or args.tgt:
        if not (args.src and args.tgt):
            raise UserError("--src and --tgt must be given together")
        if args.config:
            raise UserError("give either --config or --src/--tgt, not both")
        tree = config_to_dict(_load(args))
        tree["data"].update(source="files", train_src=args.src, train_tgt=args.tgt)
        cfg = config_from_dict(tree, "--src/--tgt")
    else:
        if not args.config:
            raise UserError("prepare needs --config FILE, or --src FILE --tgt FILE")
        cfg = _load(args)
    run_dir = _run_dir(args, cfg)
    prepare_data(cfg, run_dir)
    build_vocab(cfg.vocab, run_dir)
    return 0


def cmd_pipeline(args) -> int:
    from nmt_kd.pipeline import run_pipeline

    cfg = _load(args)
    run = _run_dir(args, cfg)
    t0 = time.time()
    lanes = _start_lanes(args, run) if args.lanes > 1 else []
    only = tuple(n for group in args.only for n in group.split(",") if n)
    run_pipeline(cfg, run, until=args.until, force=tuple(args.force), adopt=args.adopt, only=only)
    for k, (proc, log_path) in enumerate(lanes, start=2):
        if proc.wait() != 0:
            raise UserError(f"pipeline lane {k} failed (exit {proc.returncode}); see {log_path}")
    metrics = run / "report" / "metrics.json"
    if metrics.is_file() and (args.until in (None, "report")) and not args.lane:
        from nmt_kd.fileio import read_json
        from nmt_kd.report import terminal_summary

        print(terminal_summary(read_json(metrics), run / "report" / "report.html",
                               time.time() - t0))
    return 0


def _start_lanes(args, run: Path) -> list:
    """`--lanes N`: N-1 more processes run the same pipeline (stage locks keep them apart),
    each logging to RUN/lanes/laneK.log; each lane gets its share of the cores."""
    import subprocess

    argv, skip = [], False
    for a in args.argv:  # the same command without --lanes, --force and --adopt (lane 1's)
        if skip:
            skip = False
        elif a in ("--lanes", "--force"):
            skip = True
        elif not (a.startswith("--lanes=") or a.startswith("--force=") or a == "--adopt"):
            argv.append(a)
    argv.append("--lane")
    (run / "lanes").mkdir(parents=True, exist_ok=True)
    procs = []
    for k in range(2, args.lanes + 1):
        log_path = run / "lanes" / f"lane{k}.log"
        with open(log_path, "a", encoding="utf-8") as log:
            procs.append((subprocess.Popen([sys.executable, "-m", "nmt_kd.cli", *argv], stdout=log,
                                           stderr=subprocess.STDOUT, env=os.environ.copy()), log_path))
    print(f"pipeline: {args.lanes} lanes (lanes 2..{args.lanes} log to {run / 'lanes'})", flush=True)
    return procs


def cmd_train(args) -> int:
    from nmt_kd.train import train_model

    cfg = _load(args)
    name = args.name or (args.model if args.kd == "none" else f"{args.model}_{args.kd.replace('+', '_')}")
    train_model(cfg, _run_dir(args, cfg), arch=args.model, name=name, kd=args.kd,
                resume=args.resume, teacher_dir=args.teacher, init_from=args.init_from)
    return 0


def cmd_average(args) -> int:
    from nmt_kd.train import average_model_dir

    cfg = _load(args)
    average_model_dir(cfg, _run_dir(args, cfg), args.name, args.last,
                      args.out_name or f"{args.name}_avg{args.last}", until=args.until)
    return 0


def cmd_distill(args) -> int:
    from nmt_kd.distill import merge_shards, missing_shards, translate_shards
    from nmt_kd.distributed import tf_config_role
    from nmt_kd.fileio import count_lines

    cfg = _load(args)
    run_dir = _run_dir(args, cfg)
    # a multi-worker job: the worker index and count come from TF_CONFIG unless given
    role = tf_config_role()
    index = role.task_index if args.worker_index is None else args.worker_index
    workers = role.num_workers if args.num_workers is None else args.num_workers
    if not 0 <= index < workers:
        raise UserError(f"--worker-index {index} is outside 0..{workers - 1}")
    if not args.merge_only:
        translate_shards(cfg, run_dir, args.teacher, index, workers)

    def others_done() -> bool:  # worker 0 merges when it finishes last
        n_lines = count_lines(run_dir / "data" / "train.src")
        return not missing_shards(run_dir, n_lines, cfg.distill.shard_size)[0]

    if workers == 1 or args.merge_only or (index == 0 and others_done()):
        merge_shards(cfg, run_dir)
    else:
        print(f"distill: worker {index}/{workers} done; when every worker has finished, run "
              "`nmt-kd distill --merge-only` (the first worker merges by itself if it ends last)")
    return 0


def _decode_config(args):
    from nmt_kd.config import load_config

    cfg = load_config(args.config, args.overrides)
    return cfg.decode


def cmd_translate(args) -> int:
    import contextlib
    import time

    from nmt_kd.fileio import atomic_open
    from nmt_kd.progress import StatusLine
    from nmt_kd.translate import iter_input_lines, open_translator

    translator, _, _ = open_translator(args.model, _decode_config(args))
    progress = args.input not in (None, "-")
    status = StatusLine(rewrite=True)
    done = truncated = 0
    t0 = time.perf_counter()
    # The input is read and translated one chunk at a time (memory does not grow with the
    # input); an --output file appears only when complete, line for line with the input.
    try:
        with atomic_open(args.output) if args.output else contextlib.nullcontext(sys.stdout) as out:
            for result in translator.translate_stream(iter_input_lines(args.input), args.chunk_lines,
                                                      beam=args.beam, batch_size=args.batch_size):
                out.writelines(h + "\n" for h in result.hypotheses)
                out.flush()
                done += len(result.hypotheses)
                truncated += result.truncated
                if progress:
                    status.show(f"translated {done} lines, {done / (time.perf_counter() - t0):.1f} sent/s")
    finally:
        status.end()  # end the progress line (before an error message, too)
    if truncated:
        print(f"nmt-kd: warning: {truncated} input lines were longer than "
              "decode.max_src_len and were truncated", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    from nmt_kd.evaluate import evaluate_model

    decode = _decode_config(args)
    beam = args.beam if args.beam is not None else decode.beam
    batch = args.batch_size if args.batch_size is not None else decode.batch_size
    out = args.out or str(Path(args.model) / f"metrics.beam{beam}.bs{batch}.json")
    evaluate_model(args.model, args.src, args.ref, beam=beam, batch_size=batch,
                   decode_cfg=decode, test_set=args.test_set, out_json=out,
                   speed_sentences=args.speed_sentences)
    print(f"wrote {out}")
    return 0


def cmd_bench(args) -> int:
    from nmt_kd.bench import bench_decoding, speed_ratios
    from nmt_kd.fileio import write_json
    from nmt_kd.translate import read_input_lines

    lines = read_input_lines(args.src)[: args.sentences or None]
    result = bench_decoding(args.models, lines, tuple(args.beams), tuple(args.batch_sizes),
                            args.repeats, args.batch1_sentences, _decode_config(args))
    result["ratios_to_first_model"] = speed_ratios(result, str(args.models[0]), max(args.beams))
    for r in result["ratios_to_first_model"]:
        print(f"{Path(r['model']).name:>24} beam {r['beam']} batch {r['batch_size']:>3}: "
              f"{r['ratio']:.2f}x the first model at beam {max(args.beams)}")
    if args.train_steps:
        from nmt_kd.bench import bench_training

        run_dir = args.train_run_dir or Path(args.models[0]).parent
        result["training"] = bench_training(args.models, run_dir, _load(args), args.train_steps,
                                            repeats=args.repeats)
    if args.memory:
        from nmt_kd.bench import peak_memory
        from nmt_kd.tflite_translate import is_tflite_dir

        result["memory"] = []
        for model in args.models:
            beam = 1 if is_tflite_dir(model) else max(args.beams)
            bs = max(args.batch_sizes)
            m = peak_memory(model, args.src, beam, bs, args.sentences or 1000, _decode_config(args))
            result["memory"].append({"model": model, "beam": beam, "batch_size": bs, **m})
            print(f"{Path(model).name:>24} beam {beam} batch {bs:>3}: peak {m['peak_mb']:.0f} MB "
                  f"({m['model_and_decoding_mb']:.0f} MB over Python + TensorFlow)")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    if args.format == "bundle":
        from nmt_kd.bundle import pack

        digest = pack(args.model, args.out)
        size = Path(args.out).stat().st_size
        print(f"bundle: {args.out} ({size / 2**20:.1f} MB, float16 weights)\n"
              f"sha256: {digest}\n"
              f"start a pipeline from it with: --set train.init={args.out} --set train.init_sha256={digest}")
    elif args.format == "savedmodel":
        from nmt_kd.export import export_savedmodel

        export_savedmodel(args.model, args.out, _decode_config(args), beam=args.beam)
    elif args.format == "ctranslate2":
        from nmt_kd.ct2 import export_ctranslate2

        export_ctranslate2(args.model, args.out, quantize=args.quantize or "none")
    else:
        from nmt_kd.export import export_tflite

        export_tflite(args.model, args.out, _decode_config(args), quantize=args.quantize or "int8")
    return 0


def cmd_ensemble(args) -> int:
    from nmt_kd.models.ensemble import create_ensemble_dir, ensemble_meta

    out = create_ensemble_dir(args.members, args.out)
    meta = ensemble_meta(out)
    params = f"{meta['params']:,}" if meta["params"] is not None else "unknown"
    print(f"wrote {out / 'ensemble.json'}: {len(meta['members'])} members "
          f"({', '.join(meta['member_types'])}), {params} parameters in all")
    return 0


def _add_ensemble_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="name several models as one teacher (an ensemble "
                       "directory that translate, evaluate, distill and train --teacher accept)")
    p.add_argument("--members", nargs="+", required=True, metavar="DIR",
                   help="two or more model directories trained with the same spm.model")
    p.add_argument("--out", required=True, help="the ensemble directory to write")
    p.set_defaults(func=cmd_ensemble)


def cmd_analyze(args) -> int:
    from nmt_kd.analysis import analyze_model

    analyze_model(args.model, args.src, args.ref, hyp=args.hyp, run_dir=args.run_dir, out=args.out,
                  beam=args.beam, tgt_lang=args.tgt_lang, n_boot=args.bootstrap,
                  decode_cfg=_decode_config(args))
    return 0


def _add_analyze_parser(sub) -> None:
    p = sub.add_parser("analyze", help="one model's sentence-level analysis: chrF per sentence, "
                       "flags, BLEU by bucket with CIs, quality estimate (JSON + HTML)")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="model directory (scores its output: QE)")
    p.add_argument("--src", required=True, help="source file")
    p.add_argument("--ref", required=True, help="reference file")
    p.add_argument("--hyp", help="the model's output (default: translate --src greedily)")
    p.add_argument("--beam", type=int, default=1, help="beam size when translating (default 1)")
    p.add_argument("--run-dir", help="the run the model was trained in: its data/train.* and "
                   "vocab/spm.model give made-up words, subword-frequency and unseen-word buckets")
    p.add_argument("--tgt-lang", help="target language code (default: the run's, else de)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per bucket")
    p.add_argument("--out", help="output directory (default: MODEL/analysis)")
    p.set_defaults(func=cmd_analyze)


def cmd_score(args) -> int:
    from nmt_kd.evaluate import score_files
    from nmt_kd.fileio import write_json

    res = score_files(args.hyp, args.ref, args.baseline, args.bootstrap)
    print(f"{Path(args.hyp).name}: BLEU {res['bleu']:.2f}  chrF {res['chrf']:.2f}  "
          f"TER {res['ter']:.2f}  ({res['sentences']} sentences)")
    for key in ("bleu", "chrf", "ter"):
        print(f"  {key}: {res[key + '_signature']}")
    for t in res["paired_bootstrap"]:
        print(f"  vs {t['baseline']}: {t['bleu']:.2f} vs {t['baseline_bleu']:.2f} BLEU, "
              f"p = {t['p_value']:.4f} (paired bootstrap, {args.bootstrap} resamples)")
    if args.json:
        write_json(args.json, res)
    return 0


def cmd_report(args) -> int:
    from nmt_kd.report import build_report

    build_report(args.run_dir, title=args.title or f"{Path(args.run_dir).name}: teacher and students",
                 bootstrap=args.bootstrap)
    return 0


def _add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="clean and split a corpus; train the joint SentencePiece model")
    _add_config_args(p)
    p.add_argument("--src", help="source-language file (shortcut instead of --config)")
    p.add_argument("--tgt", help="target-language file, line-aligned with --src")
    p.add_argument("--run-dir", help="output directory (default: pipeline.run_dir)")
    p.set_defaults(func=cmd_prepare)


def _add_training_parsers(sub) -> None:
    """train, average, distill."""
    from nmt_kd.models.registry import architecture_names
    from nmt_kd.training.objectives import KD_MODES

    p = sub.add_parser("train", help="train the teacher or a student on a prepared run directory")
    _add_config_args(p, required=True)
    p.add_argument("--model", default="teacher", choices=architecture_names(),
                   help="the architecture (default: teacher)")
    p.add_argument("--kd", default="none", choices=tuple(KD_MODES))
    p.add_argument("--name", help="output sub-directory (default: the model name)")
    p.add_argument("--run-dir", help="run directory (default: pipeline.run_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--teacher", help="teacher model or ensemble directory for word-KD "
                   "(default: the config's KD teacher: RUN/teacher, or RUN/teacher_ensemble with "
                   "pipeline.kd_teacher: ensemble)")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="continued training: start from this trained model directory's weights "
                   "(same architecture, shape and tokenizer; the optimizer and schedule start at "
                   "step 0); a resumed checkpoint takes precedence")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("average", help="average a model's last K checkpoints into a new model directory")
    _add_config_args(p, required=True)
    p.add_argument("--run-dir", help="run directory (default: pipeline.run_dir)")
    p.add_argument("--name", default="teacher", help="model sub-directory (default: teacher)")
    p.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints")
    p.add_argument("--until", type=int, metavar="STEP",
                   help="only checkpoints saved at or before STEP (default: the newest)")
    p.add_argument("--out-name", help="output sub-directory (default: NAME_avgK)")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("distill", help="sequence-level KD: the teacher beam-translates the training source")
    _add_config_args(p, required=True)
    p.add_argument("--run-dir", help="run directory (default: pipeline.run_dir)")
    p.add_argument("--teacher", help="teacher model or ensemble directory (default: the config's "
                   "KD teacher: RUN/teacher, or RUN/teacher_ensemble with pipeline.kd_teacher: "
                   "ensemble)")
    p.add_argument("--worker-index", type=int, default=None,
                   help="this worker's index (sharded runs; default: from TF_CONFIG, else 0)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="number of workers sharing the shards (default: from TF_CONFIG, else 1)")
    p.add_argument("--merge-only", action="store_true", help="only check and merge finished shards")
    p.set_defaults(func=cmd_distill)


def _add_decoding_parsers(sub) -> None:
    """translate, evaluate."""
    p = sub.add_parser("translate", help="translate a file or stdin with a trained model")
    _add_config_args(p)
    p.add_argument("--model", required=True,
                   help="model directory (e.g. runs/x/teacher), ensemble directory, TFLite "
                   "export directory or CTranslate2 export directory")
    p.add_argument("--input", "-i", help="input file (default: stdin)")
    p.add_argument("--output", "-o", help="output file (default: stdout)")
    p.add_argument("--beam", type=int, default=None, help="beam size (1 = greedy; default decode.beam)")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per batch")
    p.add_argument("--chunk-lines", type=int, default=10_000,
                   help="lines read and translated at a time (memory is bounded by this, not the input)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("evaluate", help="sacreBLEU/chrF/TER and decoding speed on a test set")
    _add_config_args(p)
    p.add_argument("--model", required=True,
                   help="model or ensemble directory (or a TFLite or CTranslate2 export)")
    p.add_argument("--src", required=True, help="source file")
    p.add_argument("--ref", required=True, help="reference file")
    p.add_argument("--beam", type=int, default=None, help="default: decode.beam of --config")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: decode.batch_size of --config")
    p.add_argument("--test-set", help="name for reports, e.g. multi30k/test_2016_flickr")
    p.add_argument("--speed-sentences", type=int, default=0,
                   help="time only the first N sentences (default: all)")
    p.add_argument("--out", help="metrics JSON path (default: MODEL/metrics.beamB.bsN.json)")
    p.set_defaults(func=cmd_evaluate)


def _add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="run an experiment's stages from one YAML file")
    _add_config_args(p, required=True)
    p.add_argument("--run-dir", help="output directory (default: pipeline.run_dir)")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage group "
                   "(prepare, vocab, teacher, distill, students, evaluate, report)")
    p.add_argument("--force", metavar="STAGE", action="append", default=[],
                   help="re-run this stage group even if unchanged (repeatable)")
    p.add_argument("--adopt", action="store_true",
                   help="record finished output made by the step-by-step commands (a stage's "
                   "final files present, never run by the pipeline) as done instead of redoing it")
    p.add_argument("--lanes", type=int, default=None,
                   help="run the stages in N processes at once (stage locks keep them apart; "
                   "each gets cores/N intra-op threads): students and evaluations run side by side; "
                   "default: pipeline.lanes of the config")
    p.add_argument("--only", metavar="MODEL[,MODEL]", action="append", default=[],
                   help="train and evaluate only these models (e.g. rnn_seq.seed2,teacher); what "
                   "they need still runs, the report does not (nmt-kd report builds it later)")
    p.add_argument("--lane", action="store_true", help=argparse.SUPPRESS)  # a secondary lane
    p.set_defaults(func=cmd_pipeline)


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="decoding speed of several models side by side in one run")
    _add_config_args(p)
    p.add_argument("--models", nargs="+", required=True, help="model directories (the first is the reference)")
    p.add_argument("--src", required=True, help="source sentences")
    p.add_argument("--sentences", type=int, default=0, help="use the first N lines (default: all)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--batch1-sentences", type=int, default=100, help="sentences timed at batch 1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true",
                   help="also measure each model's peak memory (one fresh process per model)")
    p.add_argument("--train-steps", type=int, default=20,
                   help="time this many training steps per Keras model (0: skip)")
    p.add_argument("--train-run-dir", help="run directory whose data/train.* feeds the training "
                   "steps (default: the first model's parent)")
    p.add_argument("--out", help="JSON output")
    p.set_defaults(func=cmd_bench)


def _add_export_parser(sub) -> None:
    from nmt_kd.models.registry import EXPORT_FORMATS

    p = sub.add_parser("export", help="export a model for serving (text in, text out)")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="model directory (e.g. runs/x/student_rnn)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), default="savedmodel",
                   help="bundle: the model directory as one file (float16 weights) that a "
                        "pipeline can start from (train.init); ctranslate2: the Transformer "
                        "teacher as a CTranslate2 model directory, which translate, evaluate "
                        "and distill (--teacher) accept as --model (needs nmt-kd[ct2]); each "
                        "architecture supports some of these (tflite: the students)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty); "
                   "for --format bundle, the bundle file")
    p.add_argument("--beam", type=int, default=None,
                   help="savedmodel: beam size baked into the graph (1 = greedy; default decode.beam)")
    p.add_argument("--quantize", choices=["none", "int8"], default=None,
                   help="tflite: int8 weights (dynamic-range quantization, the default) or "
                   "float32; ctranslate2: float32 weights (the default) or int8")
    p.set_defaults(func=cmd_export)


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild RUN/report from the evaluation files (no decoding)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--title")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples at least (more when many comparisons are made, so "
                        "that Holm's correction can still reject; 0: no test)")
    p.set_defaults(func=cmd_report)


def _add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="sacreBLEU BLEU, chrF and TER of a translation file, and "
                       "the paired bootstrap test against other systems' files")
    p.add_argument("hyp", help="translations, one per line")
    p.add_argument("ref", help="references, line-aligned with HYP")
    p.add_argument("--baseline", action="append", default=[], metavar="HYP",
                   help="another system's translations for a paired bootstrap test (repeatable)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--json", help="write the scores as JSON here")
    p.set_defaults(func=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt-kd",
        description="Distil a Transformer translation teacher into small, fast students.",
    )
    parser.add_argument("--version", action="version", version=f"nmt-kd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow's own start-up and C++ log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_prepare_parser, _add_training_parsers, _add_decoding_parsers,
                _add_pipeline_parser, _add_bench_parser, _add_export_parser, _add_ensemble_parser,
                _add_report_parser, _add_analyze_parser, _add_score_parser):
        add(sub)
    return parser


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and let it probe for devices with file descriptor 2 held in a
    temporary file: its start-up lines ("oneDNN custom operations are on", "Could not find
    cuda drivers", "failed call to cuInit") are written by C++ before any Python setting can
    silence them. They are replayed when `verbose` is set or when the start-up fails.
    Without `verbose`, TensorFlow's Python logger shows errors only: its warnings (such as
    "triggered tf.function retracing", which each new decoding length bucket of
    `nmt_kd.decode_policy.max_len_bucket` sets off by design) are not a user's concern."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if "tensorflow" in sys.modules:
        _python_log_level(verbose)
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if verbose or not ok:
                held.seek(0)
                sys.stderr.write(held.read().decode("utf-8", "replace"))
                sys.stderr.flush()
    _python_log_level(verbose)


def _python_log_level(verbose: bool) -> None:
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.WARNING if verbose else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if hasattr(args, "lanes") and args.lanes is None:  # before TensorFlow starts, as below
        try:
            args.lanes = 1 if args.lane else _load(args).pipeline.lanes
        except (UserError, OSError):  # the command reports the config's problem itself
            args.lanes = 1
    lanes = getattr(args, "lanes", 1) or 1
    if lanes > 1 or getattr(args, "lane", False):  # before TensorFlow starts: it reads these once
        share = str(max(1, (os.cpu_count() or 1) // max(lanes, 2)))
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", share)
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    start_tensorflow(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"nmt-kd: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from nmt_kd.fileio import NO_ROOM

        if e.errno not in NO_ROOM:
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        print(f"nmt-kd: error: {NO_ROOM[e.errno]}{where}; files from earlier stages "
              "are intact (outputs are written to temporary files and renamed when complete)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nmt-kd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
