"""Score a model on a test set with sacreBLEU and measure its decoding speed.

Reads:  a model directory, a source file and a reference file.
Writes: metrics.json (the keys every report relies on: model, model_type, kd, params,
        test_set, beam, batch_size, bleu, chrf, ter, bleu_signature, sentences_per_second,
        tokens_per_second) and the hypotheses beside it.

Speed is measured on a second, timed pass after a full untimed pass (which also warms up
every traced decoding function), on the same machine and in the same process.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from nmt_kd.config import DecodeConfig
from nmt_kd.cpuload import OtherLoad
from nmt_kd.errors import UserError
from nmt_kd.fileio import write_json, write_lines
from nmt_kd.translate import Translator, open_translator, read_input_lines


def score(hyps: list[str], refs: list[str]) -> dict:
    """sacreBLEU BLEU, chrF and TER with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    if len(hyps) != len(refs):
        raise UserError(f"{len(hyps)} hypotheses but {len(refs)} references")
    out = {}
    for key, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        out[key] = round(float(metric.corpus_score(hyps, [refs]).score), 2)
        out[f"{key}_signature"] = str(metric.get_signature())
    return out


def paired_bootstrap(baseline: tuple[str, list[str]], system: tuple[str, list[str]],
                     refs: list[str], n_samples: int = 1000) -> dict:
    """sacreBLEU's paired bootstrap of `system` against `baseline` (each a (name, lines) pair)
    on BLEU: both scores, their difference, the p-value and the test's signature."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    for name, lines in (baseline, system):
        if len(lines) != len(refs):
            raise UserError(f"{name} has {len(lines)} lines but the references have {len(refs)}")
    sigs, res = PairedTest([baseline, system], {"BLEU": BLEU()}, [refs], test_type="bs",
                           n_samples=n_samples)()
    base, mine = res["BLEU"]
    return {"bleu": round(mine.score, 2), "baseline_bleu": round(base.score, 2),
            "delta": round(mine.score - base.score, 2), "p_value": round(float(mine.p_value), 4),
            "signature": str(sigs["BLEU"])}


def score_files(hyp: str, ref: str, baselines: list[str] = (), n_samples: int = 1000) -> dict:
    """`nmt-kd score`: BLEU, chrF and TER of a translation file, and the paired bootstrap
    against each baseline file. Files are read strictly (UTF-8, one sentence per line); a
    line-count mismatch is an error naming both files, never a silent truncation."""
    from nmt_kd.fileio import read_lines

    hyps, refs = read_lines(hyp), read_lines(ref)
    if len(hyps) != len(refs):
        raise UserError(f"{hyp} has {len(hyps)} lines but {ref} has {len(refs)}")
    result = {"hyp": hyp, "ref": ref, "sentences": len(refs), **score(hyps, refs),
              "paired_bootstrap": []}
    for other in baselines:
        test = paired_bootstrap((other, read_lines(other)), (hyp, hyps), refs, n_samples)
        result["paired_bootstrap"].append({"baseline": other, **test})
    return result


def machine_info() -> dict:
    import tensorflow as tf

    from nmt_kd.fileio import cpuinfo

    cpu = cpuinfo("model name") or platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "tensorflow": tf.__version__,
            "python": platform.python_version()}


def model_size_bytes(model_dir: Path) -> int:
    """model.keras's size (an ensemble directory: the sum of its members')."""
    from nmt_kd.models.persistence import model_dir_bytes

    return model_dir_bytes(model_dir)


def _translator_and_meta(model_dir: Path, translator: Translator | None,
                         decode_cfg: DecodeConfig | None) -> tuple[Translator, dict, int]:
    """(translator, model.json's contents, size in bytes): the model opened, or the given
    translator with its directory's metadata."""
    if translator is None:
        return open_translator(model_dir, decode_cfg or DecodeConfig())
    from nmt_kd.fileio import read_json

    meta = read_json(model_dir / "model.json") if (model_dir / "model.json").is_file() else {}
    return translator, meta, model_size_bytes(model_dir)


def evaluate_model(
    model_dir: str | Path, src: str | Path, ref: str | Path, beam: int = 5, batch_size: int = 64,
    decode_cfg: DecodeConfig | None = None, test_set: str | None = None,
    out_json: str | Path | None = None, speed_sentences: int = 0, translator: Translator | None = None,
    log=print, scored: tuple[int, list[str]] | None = None, timed: bool = True,
    split: str = "test",
) -> dict:
    """Translate `src`, score against `ref`, time a second pass; write metrics JSON if asked.

    `scored=(batch_size, hypotheses)`: score these (the same model and beam decoded at another
    batch size) instead of decoding the whole set again at `batch_size`; only the timed pass
    (`speed_sentences`) runs at this batch size. The JSON records `scored_batch_size`.
    `timed=False` skips the second pass (for scores only, e.g. the valid split): the speed
    fields then come from the first pass, traces included, and `timed_pass` says so.
    """
    model_dir = Path(model_dir)
    src_lines, ref_lines = read_input_lines(str(src)), read_input_lines(str(ref), clean=False)
    if len(src_lines) != len(ref_lines):
        raise UserError(f"{src} has {len(src_lines)} lines but {ref} has {len(ref_lines)}")
    if not timed and scored is not None:
        raise ValueError("timed=False scores a first pass; it cannot take `scored` hypotheses")
    translator, meta, size_bytes = _translator_and_meta(model_dir, translator, decode_cfg)
    timed_src = src_lines[:speed_sentences] if speed_sentences else src_lines
    if scored is None:
        with OtherLoad() as first_load:
            first = translator.translate(src_lines, beam=beam, batch_size=batch_size,
                                         progress=sys.stderr.isatty())  # a bar with ETA on a terminal
        hyps, truncated, scored_bs = first.hypotheses, first.truncated, batch_size
    else:
        scored_bs, hyps = scored
        if len(hyps) != len(src_lines):
            raise ValueError(f"{len(hyps)} scored hypotheses for {len(src_lines)} source lines")
        truncated = translator.encode_sources(src_lines)[1]
        translator.translate(timed_src, beam=beam, batch_size=batch_size)  # warm-up: traces
    if timed:
        with OtherLoad() as load:
            timing = translator.translate(timed_src, beam=beam, batch_size=batch_size)
    else:
        timing, load = first, first_load
    metrics = {
        "split": split,
        "model": str(model_dir),
        "model_type": meta.get("model_type", "unknown"),
        "kd": meta.get("kd", "none"),
        "params": translator.params(),
        "size_bytes": size_bytes,
        "format": meta.get("format", "keras"),
        "test_set": test_set or str(src),
        "n_sentences": len(src_lines),
        "beam": int(beam),
        "batch_size": int(batch_size),
        "length_penalty": translator.cfg.length_penalty,
        **score(hyps, ref_lines),
        "scored_batch_size": int(scored_bs),
        "sentences_per_second": round(len(timed_src) / timing.seconds, 2),
        "tokens_per_second": round(sum(timing.token_counts) / timing.seconds, 1),
        "timed_sentences": len(timed_src),
        "timed_seconds": round(timing.seconds, 3),
        "timed_pass": "second" if timed else "first (includes tracing)",
        # the share of the machine other processes used while the timed pass ran (None: not
        # measurable here); above nmt_kd.cpuload.BUSY_SHARE the report calls the speed unverified
        "cpu_other_share": load.share,
        "truncated_inputs": truncated,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if out_json:
        out_json = Path(out_json)
        write_lines(out_json.with_suffix(".hyp.txt"), hyps)
        write_json(out_json, metrics)
    log(f"{metrics['model_type']} ({metrics['kd']}) beam {beam} batch {batch_size}: "
        f"BLEU {metrics['bleu']:.2f} chrF {metrics['chrf']:.2f} TER {metrics['ter']:.2f} | "
        f"{metrics['sentences_per_second']:.1f} sent/s, {metrics['tokens_per_second']:.0f} tok/s\n"
        f"  {metrics['bleu_signature']}")
    return metrics
