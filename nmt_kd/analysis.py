"""Where, and how, each student differs from its teacher.

For a test set, the teacher's and every student's output:
- per sentence: sentence chrF of each model against the reference, and of each student
  against the teacher;
- flags, counted per model with examples: hallucinated loops (repeated n-grams), length ratio
  out of bounds, output copied from the source, output in the wrong language (py3langid, which
  ships its model), made-up words (never seen in the training targets), empty output;
- corpus BLEU by bucket (source length, training frequency of the source's rarest subword,
  source words unseen in training) with 95% percentile bootstrap confidence intervals;
- a reference-free quality estimate: each model's own length-normalised log-probability of
  its output (teacher-forced), with its Pearson and Spearman correlation to sentence chrF.

Reads:  RUN/eval/<model>/beam{B}.bs{N}.hyp.txt (via `nmt_kd.report.load_rows`),
        RUN/data/test.{src,tgt}, RUN/data/train.{src,tgt}, RUN/vocab/spm.model,
        RUN/data/config.yaml (languages), RUN/<model>/ (the models, for the quality estimate).
`analyze_run` returns markdown lines, an HTML fragment and a JSON dict for the report;
`analyze_model` does one model and writes analysis.json + analysis.html (`nmt-kd analyze`).
"""

from __future__ import annotations

import difflib
import functools
import html
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt_kd.fileio import atomic_open, read_lines, write_json

LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 10**9))  # source words; the report's too

FLAGS = ("empty", "copy", "wrong_language", "loop", "made_up_words", "length_ratio")
FLAG_RULES = {
    "empty": "the output is empty",
    "copy": "the output repeats the source (same words, or >= 80% of its 3+ words are source words)",
    "wrong_language": "an output of 3+ words for which py3langid prefers another language at "
                      "least 9:1 over the target language",
    "loop": "an n-gram repeated back to back: 3 times (n <= 3) or twice (n >= 4)",
    "made_up_words": "a word never seen in the training targets (digits excluded)",
    "length_ratio": "output words / source words outside [{lo}, {hi}]",
}
# A sentence is counted under its most specific cause: a copied source is not also counted
# as wrong language or made-up words, wrong language not also as made-up words, and a loop
# or an empty output not also as a length ratio out of bounds.
SUPPRESSED_BY = {"wrong_language": ("empty", "copy"), "made_up_words": ("empty", "copy", "wrong_language"),
                 "loop": ("empty",), "length_ratio": ("empty", "copy", "loop")}
LENGTH_RATIO = (0.5, 2.0)
LANG_ODDS = 9.0
LANG_MIN_WORDS = 3  # shorter outputs are too short to tell their language
FREQ_BUCKETS = ((0, 0), (1, 9), (10, 99), (100, 999), (1000, 10**12))
N_EXAMPLES = 5
N_GAPS = 10
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Casefolded word tokens (punctuation dropped)."""
    return _WORD.findall(text.casefold())


# --- training statistics -----------------------------------------------------------------

@dataclass
class TrainingStats:
    """What the analysis needs to know about the training data of a run."""
    src_words: set[str]
    tgt_words: set[str]
    piece_freq: Counter | None = None  # SentencePiece id -> count in the training source
    sp: object | None = None  # the SentencePiece processor that made piece_freq


def load_training_stats(run: Path | None) -> TrainingStats | None:
    """Words of RUN/data/train.{src,tgt} and subword counts of the training source
    (RUN/vocab/spm.model); None when the run has no training data."""
    if run is None:
        return None
    data = Path(run) / "data"
    if not (data / "train.src").is_file() or not (data / "train.tgt").is_file():
        return None
    src = read_lines(data / "train.src")
    stats = TrainingStats({w for line in src for w in words(line)},
                          {w for line in read_lines(data / "train.tgt") for w in words(line)})
    spm_file = Path(run) / "vocab" / "spm.model"
    if spm_file.is_file():
        import sentencepiece as spm

        stats.sp = spm.SentencePieceProcessor(model_file=str(spm_file))
        stats.piece_freq = Counter(i for ids in stats.sp.encode(src, out_type=int) for i in ids)
    return stats


def run_languages(run: Path | None) -> tuple[str, str]:
    """(source, target) language codes from RUN/data/config.yaml (default en, de)."""
    cfg = Path(run) / "data" / "config.yaml" if run else None
    if cfg and cfg.is_file():
        import yaml

        data = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("data", {})
        return str(data.get("src_lang", "en")), str(data.get("tgt_lang", "de"))
    return "en", "de"


# --- per sentence --------------------------------------------------------------------------

class SentenceChrf:
    """sacreBLEU sentence chrF (CHRF() defaults), with each text's n-grams extracted once, so
    that scoring 9 outputs against the reference and 8 against the teacher's stays fast.
    Equal to `CHRF().sentence_score(hyp, [ref]).score` (a test checks it)."""

    def __init__(self):
        from sacrebleu.metrics import CHRF

        self.chrf = CHRF()
        self._ngrams: dict[str, list] = {}

    def ngrams(self, text: str) -> list:
        if text not in self._ngrams:
            seg = self.chrf._preprocess_segment(text)
            self._ngrams[text] = self.chrf._extract_reference_info([seg])["ref_ngrams"][0]
        return self._ngrams[text]

    def score(self, hyp: str, ref: str) -> float:
        stats: list[int] = []
        for h, r in zip(self.ngrams(hyp), self.ngrams(ref), strict=True):
            stats.extend(self.chrf._get_match_statistics(h, r))
        return self.chrf._compute_f_score(stats)


def sentence_chrf(hyps: Sequence[str], refs: Sequence[str],
                  scorer: SentenceChrf | None = None) -> list[float]:
    """sacreBLEU sentence chrF of each hypothesis against its one reference."""
    scorer = scorer or SentenceChrf()
    return [round(scorer.score(h, r), 2) for h, r in zip(hyps, refs, strict=True)]


# --- flags ---------------------------------------------------------------------------------

def find_loop(tokens: Sequence[str]) -> str | None:
    """The first n-gram repeated back to back 3 times (n <= 3) or twice (n >= 4), else None."""
    n_tok = len(tokens)
    for n in range(1, n_tok // 2 + 1):
        copies = 3 if n <= 3 else 2
        for i in range(n_tok - copies * n + 1):
            gram = tokens[i:i + n]
            if all(tokens[i + k * n:i + (k + 1) * n] == gram for k in range(1, copies)):
                return " ".join(gram)
    return None


def is_copy(hyp: str, src: str) -> bool:
    """The output repeats the source: the same words, or >= 80% of its 3+ words in the source."""
    h, s = words(hyp), words(src)
    if not h:
        return False
    if h == s:
        return True
    src_set = set(s)
    return len(h) >= 3 and sum(w in src_set for w in h) >= 0.8 * len(h)


_LID = None


def language_identifier():
    """py3langid's identifier (its model ships in the package), loaded once per process."""
    global _LID
    if _LID is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LID = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _LID


@functools.lru_cache(maxsize=1 << 16)
def detect_wrong_language(text: str, tgt_lang: str) -> str | None:
    """The language py3langid prefers at least LANG_ODDS:1 over `tgt_lang`, else None.
    (Multi30k val + test, 2,014 sentences each way: German flagged 0 times, English 2,013.)"""
    lid = language_identifier()
    if tgt_lang not in lid.nb_classes or len(words(text)) < LANG_MIN_WORDS:
        return None
    probs = dict(lid.rank(text))
    best = max(probs, key=probs.get)
    if best != tgt_lang and probs[best] >= LANG_ODDS * probs.get(tgt_lang, 0.0):
        return best
    return None


def sentence_flags(hyp: str, src: str, tgt_lang: str, tgt_words: set[str] | None) -> dict[str, str]:
    """Every flag that applies to one output, each with a short detail, before suppression."""
    found: dict[str, str] = {}
    toks, n_src = words(hyp), len(words(src))
    if not hyp.strip():
        found["empty"] = ""
    if is_copy(hyp, src):
        found["copy"] = ""
    lang = detect_wrong_language(hyp, tgt_lang)
    if lang:
        found["wrong_language"] = lang
    loop = find_loop(toks)
    if loop:
        found["loop"] = loop
    if tgt_words is not None:
        unseen = sorted({w for w in toks if w not in tgt_words and not any(c.isdigit() for c in w)})
        if unseen:
            found["made_up_words"] = ", ".join(unseen)
    if n_src:
        ratio = len(toks) / n_src
        if not LENGTH_RATIO[0] <= ratio <= LENGTH_RATIO[1]:
            found["length_ratio"] = f"{ratio:.2f}"
    return found


def flag_outputs(srcs: Sequence[str], hyps: Sequence[str], tgt_lang: str,
                 tgt_words: set[str] | None) -> dict[str, dict]:
    """Per flag: count, 0-based sentence indexes and up to N_EXAMPLES examples, each sentence
    counted under its most specific cause (see SUPPRESSED_BY)."""
    out = {f: {"count": 0, "lines": [], "examples": []} for f in FLAGS}
    if tgt_words is None:
        out["made_up_words"]["unavailable"] = "no training targets (RUN/data/train.tgt)"
    for i, (src, hyp) in enumerate(zip(srcs, hyps, strict=True)):
        found = sentence_flags(hyp, src, tgt_lang, tgt_words)
        for flag, detail in found.items():
            if any(other in found for other in SUPPRESSED_BY.get(flag, ())):
                continue
            entry = out[flag]
            entry["count"] += 1
            entry["lines"].append(i)
            if len(entry["examples"]) < N_EXAMPLES:
                entry["examples"].append({"line": i + 1, "source": src, "output": hyp, "detail": detail})
    return out


# --- buckets with bootstrap confidence intervals -------------------------------------------

def bleu_stats(hyps: Sequence[str], refs: Sequence[str], bleu=None) -> np.ndarray:
    """sacreBLEU's sufficient statistics per sentence: [n, 10] (lengths, matches, totals).
    `bleu`: a `BLEU(references=[refs])` to reuse its cached reference n-grams."""
    if bleu is None:
        from sacrebleu.metrics import BLEU

        bleu = BLEU(references=[list(refs)])
    return np.asarray(bleu._extract_corpus_statistics(list(hyps), None), dtype=np.float64)


def bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU of each row of summed statistics [k, 10], as sacreBLEU computes it
    (smooth_method='exp', 4-grams), vectorised over the rows."""
    s = np.atleast_2d(np.asarray(stats, dtype=np.float64))
    sys_len, ref_len, correct, total = s[:, 0], s[:, 1], s[:, 2:6], s[:, 6:10]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bp = np.where(sys_len < ref_len,
                      np.where(sys_len > 0, np.exp(1 - ref_len / np.maximum(sys_len, 1)), 0.0), 1.0)
        zero = correct == 0
        smooth = 2.0 ** np.cumsum(zero, axis=1)
        prec = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
        prec = np.where(np.cumsum(total == 0, axis=1) > 0, 0.0, prec)  # sacreBLEU stops there
        logp = np.where(prec > 0, np.log(np.where(prec > 0, prec, 1.0)), -9999999999.0)
        score = bp * np.exp(logp.mean(axis=1))
    return np.where(correct.sum(axis=1) == 0, 0.0, score)


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] counts: how often each sentence is drawn in each resample (with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bucket_scores(stats: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> dict:
    """Corpus BLEU of the sentences `idx` and its 95% percentile bootstrap interval."""
    sub = stats[idx]
    point = float(bleu_from_stats(sub.sum(axis=0))[0])
    lo, hi = np.percentile(bleu_from_stats(weights @ sub), [2.5, 97.5])
    return {"bleu": round(point, 2), "lo": round(float(lo), 2), "hi": round(float(hi), 2)}


def _freq_label(lo: int, hi: int) -> str:
    return "0 (unseen)" if hi == 0 else f"{lo:,}+" if hi >= 10**12 else f"{lo:,}-{hi:,}"


def bucket_assignments(srcs: Sequence[str], stats: TrainingStats | None) -> dict[str, dict]:
    """For each bucketing: its labels and each sentence's bucket index."""
    def which(value, bounds):
        return next(k for k, (lo, hi) in enumerate(bounds) if lo <= value <= hi)

    out = {"source_length": {
        "title": "source length (words)",
        "labels": [f"{lo}-{hi}" if hi < 10**9 else f"{lo}+" for lo, hi in LENGTH_BUCKETS],
        "index": [which(max(len(s.split()), 1), LENGTH_BUCKETS) for s in srcs]}}
    if stats is None:
        return out
    if stats.piece_freq is not None:
        rarest = [min((stats.piece_freq.get(i, 0) for i in ids), default=0)
                  for ids in stats.sp.encode(list(srcs), out_type=int)]
        out["rarest_subword"] = {
            "title": "training frequency of the source's rarest subword",
            "labels": [_freq_label(lo, hi) for lo, hi in FREQ_BUCKETS],
            "index": [which(f, FREQ_BUCKETS) for f in rarest]}
    out["unseen_source_words"] = {
        "title": "source holds a word unseen in the training source",
        "labels": ["no", "yes"],
        "index": [int(any(w not in stats.src_words for w in words(s))) for s in srcs]}
    return out


def bucket_tables(assign: dict[str, dict], stats_by_model: dict[str, np.ndarray],
                  n_boot: int, seed: int = 1) -> dict[str, dict]:
    """BLEU with CIs per bucket and model; the same resamples for every model (paired)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, spec in assign.items():
        index = np.asarray(spec["index"])
        table = {"title": spec["title"], "labels": spec["labels"],
                 "n": [int((index == k).sum()) for k in range(len(spec["labels"]))],
                 "models": {name: [] for name in stats_by_model}}
        for k in range(len(spec["labels"])):
            idx = np.flatnonzero(index == k)
            weights = bootstrap_weights(len(idx), n_boot, rng) if len(idx) else None
            for name, stats in stats_by_model.items():
                table["models"][name].append(bucket_scores(stats, idx, weights) if len(idx) else None)
        out[key] = table
    return out


# --- reference-free quality estimate -------------------------------------------------------

def qe_scores(model, tokenizer, srcs: Sequence[str], hyps: Sequence[str],
              batch_size: int = 256) -> list[float]:
    """Each output's length-normalised log-probability under `model` (teacher-forced; the
    end-of-sentence token counts as one more token), batched by length."""
    import tensorflow as tf

    from nmt_kd import BOS_ID, EOS_ID

    limit = int(model.get_config().get("max_positions", 1024))
    src_ids = [ids[:limit - 1] + [EOS_ID] for ids in tokenizer.encode(srcs)]
    tgt_ids = [ids[:limit - 1] + [EOS_ID] for ids in tokenizer.encode(hyps)]
    order = sorted(range(len(srcs)), key=lambda i: (len(tgt_ids[i]), len(src_ids[i])))
    out = np.zeros(len(srcs))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width_s, width_t = max(len(src_ids[i]) for i in idx), max(len(tgt_ids[i]) for i in idx)
        src = np.zeros((len(idx), width_s), np.int32)
        gold = np.zeros((len(idx), width_t), np.int32)
        for row, i in enumerate(idx):
            src[row, :len(src_ids[i])] = src_ids[i]
            gold[row, :len(tgt_ids[i])] = tgt_ids[i]
        tgt_in = np.concatenate([np.full((len(idx), 1), BOS_ID, np.int32), gold[:, :-1]], axis=1)
        tgt_in[gold == 0] = 0  # padding after eos stays padding
        logits = model((tf.constant(src), tf.constant(tgt_in)), training=False)
        logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        picked = tf.gather(logp, tf.constant(gold), axis=-1, batch_dims=2).numpy()
        mask = gold != 0
        out[idx] = (picked * mask).sum(axis=1) / mask.sum(axis=1)
    return [round(float(x), 4) for x in out]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Pearson and Spearman correlation (None where either side is constant)."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def pearson(u, v):
        if len(u) < 2 or u.std() == 0 or v.std() == 0:
            return None
        return round(float(np.corrcoef(u, v)[0, 1]), 4)

    return {"pearson": pearson(a, b), "spearman": pearson(_ranks(a), _ranks(b)), "n": len(a)}


def model_qe(model_dir: Path, srcs: Sequence[str], hyps: Sequence[str],
             log: Callable[[str], None] = print) -> list[float] | None:
    """QE scores with the Keras model in `model_dir`, or None (with a message) if it cannot load."""
    from nmt_kd.errors import UserError
    from nmt_kd.models.ensemble import is_ensemble_dir
    from nmt_kd.models.persistence import load_model_dir

    if not (Path(model_dir) / "model.keras").is_file() and not is_ensemble_dir(model_dir):
        log(f"analysis: no model.keras in {model_dir}; no quality estimate for it")
        return None
    try:
        model, tokenizer, _ = load_model_dir(model_dir)
    except UserError as e:
        log(f"analysis: {e}; no quality estimate for it")
        return None
    return qe_scores(model, tokenizer, srcs, hyps)


def _lines_digest(lines: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def cached_model_qe(model_dir: Path, srcs: Sequence[str], hyps: Sequence[str], cache: Path,
                    log: Callable[[str], None] = print) -> list[float] | None:
    """`model_qe`, remembered in CACHE (JSON beside the hypothesis file) for these sources and
    outputs: a report rebuilt after the model directory is gone (an archived run, a model
    evaluated on another machine) keeps its quality estimate. A cache whose sources or outputs
    differ from these is ignored (and rewritten when the model is there)."""
    from nmt_kd.fileio import read_json
    from nmt_kd.models.ensemble import is_ensemble_dir

    key = {"src_sha256": _lines_digest(srcs), "hyp_sha256": _lines_digest(hyps)}
    cached = None
    if cache.is_file():
        try:
            cached = read_json(cache)
        except (OSError, ValueError):
            cached = None
    fresh = (isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items())
             and isinstance(cached.get("scores"), list) and len(cached["scores"]) == len(hyps))
    has_model = (Path(model_dir) / "model.keras").is_file() or is_ensemble_dir(model_dir)
    if fresh and not has_model:
        log(f"analysis: quality estimate of {Path(model_dir).name} from {cache} (model not present)")
        return [float(x) for x in cached["scores"]]
    if fresh and cached.get("model") == str(model_dir):
        return [float(x) for x in cached["scores"]]
    scores = model_qe(model_dir, srcs, hyps, log)
    if scores is not None:
        write_json(cache, {**key, "model": str(model_dir), "scores": scores})
    return scores


# --- assembly ------------------------------------------------------------------------------

def word_diff(teacher: str, student: str) -> list[list[str]]:
    """difflib opcodes over words: [[tag, teacher words, student words], ...]."""
    a, b = teacher.split(), student.split()
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return [[tag, " ".join(a[i1:i2]), " ".join(b[j1:j2])] for tag, i1, i2, j1, j2 in ops]


def largest_gaps(srcs, refs, teacher_hyps, student_hyps, teacher_chrf, student_chrf,
                 n: int = N_GAPS) -> list[dict]:
    """The sentences where the student falls furthest below its teacher (sentence chrF)."""
    gap = np.asarray(teacher_chrf) - np.asarray(student_chrf)
    out = []
    for i in np.argsort(-gap, kind="mergesort")[:n]:
        if gap[i] <= 0:
            break
        out.append({"line": int(i) + 1, "gap": round(float(gap[i]), 2), "source": srcs[i],
                    "reference": refs[i], "teacher": teacher_hyps[i], "student": student_hyps[i],
                    "teacher_chrf": teacher_chrf[i], "student_chrf": student_chrf[i],
                    "diff": word_diff(teacher_hyps[i], student_hyps[i])})
    return out


def _model_summary(chrf: list[float], vs_teacher: list[float] | None, teacher_chrf,
                   qe: list[float] | None) -> dict:
    line = {"mean_sentence_chrf": round(float(np.mean(chrf)), 2) if chrf else None}
    if vs_teacher is not None:
        line["mean_chrf_vs_teacher"] = round(float(np.mean(vs_teacher)), 2)
        line["below_teacher_by_10"] = int((np.asarray(teacher_chrf) - np.asarray(chrf) > 10).sum())
    if qe is not None:
        line["qe_mean"] = round(float(np.mean(qe)), 4)
        line["qe_vs_chrf"] = correlations(qe, chrf)
    return line


def analyze_systems(srcs: Sequence[str], refs: Sequence[str], systems: dict[str, list[str]],
                    teacher: str | None = None, stats: TrainingStats | None = None,
                    tgt_lang: str = "de", qe: dict[str, list[float] | None] | None = None,
                    n_boot: int = 1000, seed: int = 1) -> dict:
    """The whole analysis of `systems` (name -> outputs, line-aligned with srcs/refs) as a JSON
    dict; `teacher` names the system the others are compared with."""
    from sacrebleu.metrics import BLEU

    qe = qe or {}
    for name, hyps in systems.items():
        if len(hyps) != len(srcs) or len(refs) != len(srcs):
            from nmt_kd.errors import UserError

            raise UserError(f"{name}: {len(hyps)} outputs for {len(srcs)} sources and {len(refs)} references")
    scorer = SentenceChrf()
    chrf = {name: sentence_chrf(h, refs, scorer) for name, h in systems.items()}
    t_hyps = systems.get(teacher) if teacher else None
    vs_teacher = {name: sentence_chrf(h, t_hyps, scorer) for name, h in systems.items()
                  if t_hyps is not None and name != teacher}
    tgt_words = stats.tgt_words if stats else None
    flags = {name: flag_outputs(srcs, h, tgt_lang, tgt_words) for name, h in systems.items()}
    flags["reference"] = flag_outputs(srcs, refs, tgt_lang, tgt_words)  # what a human does
    assign = bucket_assignments(srcs, stats)
    bleu = BLEU(references=[list(refs)])
    buckets = bucket_tables(assign, {n: bleu_stats(h, refs, bleu) for n, h in systems.items()},
                            n_boot, seed)
    gaps = {name: largest_gaps(srcs, refs, t_hyps, h, chrf[teacher], chrf[name])
            for name, h in systems.items() if name in vs_teacher}
    summary = {name: _model_summary(chrf[name], vs_teacher.get(name),
                                    chrf[teacher] if t_hyps is not None else None, qe.get(name))
               for name in systems}
    return {"models": list(systems), "teacher": teacher, "n_sentences": len(srcs),
            "target_language": tgt_lang, "bootstrap_resamples": n_boot, "summary": summary,
            "sentence_chrf": chrf, "sentence_chrf_vs_teacher": vs_teacher,
            "sentence_qe": {k: v for k, v in qe.items() if v is not None},
            "flag_rules": {k: v.format(lo=LENGTH_RATIO[0], hi=LENGTH_RATIO[1]) for k, v in FLAG_RULES.items()},
            "flags": flags, "buckets": buckets, "bucket_index": {k: v["index"] for k, v in assign.items()},
            "largest_gaps": gaps, "source_words": [len(words(s)) for s in srcs]}


# --- markdown ------------------------------------------------------------------------------

def _num(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ci(cell: dict | None) -> str:
    return "-" if cell is None else f"{cell['bleu']:.2f} [{cell['lo']:.2f}, {cell['hi']:.2f}]"


def summary_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    head = ["model", "mean sentence chrF", "chrF vs teacher", "below teacher by 10+",
            "QE mean", "QE~chrF Pearson", "QE~chrF Spearman"]
    body = []
    for name in result["models"]:
        s = result["summary"][name]
        corr = s.get("qe_vs_chrf", {})
        body.append([name, _num(s["mean_sentence_chrf"]), _num(s.get("mean_chrf_vs_teacher")),
                     str(s.get("below_teacher_by_10", "-")), _num(s.get("qe_mean"), 3),
                     _num(corr.get("pearson"), 3), _num(corr.get("spearman"), 3)])
    return head, body


def flag_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    head = ["model"] + [f.replace("_", " ") for f in FLAGS]
    body = [[name] + [("n/a" if result["flags"][name][f].get("unavailable") else
                       str(result["flags"][name][f]["count"])) for f in FLAGS]
            for name in [*result["models"], "reference"]]
    return head, body


def bucket_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    head = ["model"] + [f"{lab} (n={n})" for lab, n in zip(table["labels"], table["n"], strict=True)]
    return head, [[name] + [_ci(c) for c in cells] for name, cells in table["models"].items()]


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body])


def to_markdown(result: dict) -> list[str]:
    """Short markdown sections: per-sentence summary and QE, flags, buckets, top gaps."""
    md = [f"## {_heading(result)}", "",
          f"Sentence chrF (sacreBLEU) against the reference over {result['n_sentences']} sentences; "
          "*chrF vs teacher* scores a student against the teacher's output; *below teacher by "
          "10+* counts sentences where the student's chrF is 10+ points under the teacher's. QE is "
          "each model's own length-normalised log-probability of its output (no reference), "
          "correlated with its sentence chrF. The HTML report has the sortable sentence table.", ""]
    md += _md_table(*summary_rows(result))
    md += ["", "### Flags", "", "Sentences per model; each counted under its most specific "
           "cause (a copied source is not also wrong language). The reference row is the human "
           "translation, for scale.", ""]
    md += _md_table(*flag_rows(result))
    md += [""] + [f"- *{f.replace('_', ' ')}*: {rule}" for f, rule in result["flag_rules"].items()]
    md += ["", f"### BLEU by bucket (95% bootstrap interval, {result['bootstrap_resamples']} "
           "resamples of the bucket's sentences)", ""]
    for table in result["buckets"].values():
        md += [f"By {table['title']}:", ""] + _md_table(*bucket_rows(table)) + [""]
    if result["largest_gaps"]:
        md += ["### Largest gap per student", ""]
        for name, gaps in result["largest_gaps"].items():
            if gaps:
                g = gaps[0]
                md += [f"- **{name}**, line {g['line']} (chrF {g['teacher_chrf']:.1f} -> "
                       f"{g['student_chrf']:.1f}): teacher *{g['teacher'] or '(empty)'}* / "
                       f"student *{g['student'] or '(empty)'}*"]
        md.append("")
    return md


# --- HTML ----------------------------------------------------------------------------------

_CSS = """<style>
#analysis .scroll{max-height:600px;overflow:auto;border:1px solid #ddd}
#analysis table.sortable th{cursor:pointer;position:sticky;top:0;user-select:none}
#analysis table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
#analysis table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
#analysis td.text{text-align:left;max-width:420px}
#analysis del{background:#fdd;text-decoration:line-through}#analysis ins{background:#dfd;text-decoration:none}
#analysis .gap td{text-align:left}#analysis details{margin:6px 0}
</style>"""

# Click a column header: sort the rows by that column (numbers as numbers), again: reverse.
_SORT_JS = """<script>
(function () {
  function key(row, col) {
    const cell = row.cells[col];
    const v = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent;
    const x = parseFloat(v);
    return isNaN(x) ? v.toLowerCase() : x;
  }
  function sortBy(table, col, th) {
    const body = table.tBodies[0];
    const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = key(a, col), y = key(b, col);
      if (typeof x === "number" && typeof y === "number") return (x - y) * dir;
      return String(x).localeCompare(String(y)) * dir;
    });
    rows.forEach(r => body.appendChild(r));
  }
  document.querySelectorAll("table.sortable").forEach(table => {
    table.tHead.querySelectorAll("th").forEach((th, col) =>
      th.addEventListener("click", () => sortBy(table, col, th)));
  });
})();
</script>"""


def _html_table(head: list[str], body: list[list[str]], cls: str = "", table_id: str = "") -> str:
    esc = html.escape
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<table class="{cls}"{ident}><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(
                "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
            + "</tbody></table>")


def _sentence_columns(result: dict) -> list[tuple[str, list[float], str | None, str]]:
    """(header, values, model whose output a cell's tooltip shows, number format) per column."""
    cols = [(f"{name} chrF", result["sentence_chrf"][name], name, ".1f") for name in result["models"]]
    cols += [(f"{name} vs teacher", v, None, ".1f") for name, v in result["sentence_chrf_vs_teacher"].items()]
    cols += [(f"{name} QE", v, None, ".2f") for name, v in result["sentence_qe"].items()]
    return cols


def sentence_table(result: dict, srcs: Sequence[str], outputs: dict[str, list[str]] | None = None) -> str:
    """Every sentence, one row, sortable by any column (click its header); a model's chrF cell
    shows its output on hover when `outputs` are given."""
    esc, outputs = html.escape, outputs or {}
    cols = _sentence_columns(result)
    head = ["#", "words", "source"] + [c[0] for c in cols]
    rows = []
    for i, src in enumerate(srcs):
        cells = [f'<td data-v="{i + 1}">{i + 1}</td>',
                 f'<td data-v="{result["source_words"][i]}">{result["source_words"][i]}</td>',
                 f'<td class="text" title="{esc(src)}">{esc(src)}</td>']
        for _, values, model, fmt in cols:
            tip = f' title="{esc(outputs[model][i])}"' if model in outputs else ""
            cells.append(f'<td data-v="{values[i]}"{tip}>{values[i]:{fmt}}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<div class="scroll"><table class="sortable" id="sentence-table"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def _diff_html(diff: list[list[str]], side: int) -> str:
    """One side of a word diff: words only the teacher has in <del>, only the student in <ins>."""
    esc, parts = html.escape, []
    for tag, a, b in diff:
        text = a if side == 1 else b
        if not text:
            continue
        parts.append(esc(text) if tag == "equal" else
                     f"<del>{esc(text)}</del>" if side == 1 else f"<ins>{esc(text)}</ins>")
    return " ".join(parts)


def gaps_html(result: dict) -> str:
    """Per student, the sentences where it falls furthest below the teacher, diff highlighted."""
    esc, out = html.escape, []
    for k, (name, gaps) in enumerate(result["largest_gaps"].items()):
        items = "".join(
            f'<table class="gap"><tr><th>line {g["line"]}</th><td>chrF teacher {g["teacher_chrf"]:.1f}, '
            f'student {g["student_chrf"]:.1f} (gap {g["gap"]:.1f})</td></tr>'
            f"<tr><th>source</th><td>{esc(g['source'])}</td></tr>"
            f"<tr><th>reference</th><td>{esc(g['reference'])}</td></tr>"
            f"<tr><th>teacher</th><td>{_diff_html(g['diff'], 1)}</td></tr>"
            f"<tr><th>student</th><td>{_diff_html(g['diff'], 2)}</td></tr></table>" for g in gaps)
        out.append(f"<details{' open' if k == 0 else ''}><summary>{esc(name)}: {len(gaps)} sentences"
                   f"</summary>{items or '<p>never below the teacher</p>'}</details>")
    return "".join(out)


def flags_html(result: dict) -> str:
    esc = html.escape
    parts = [_html_table(*flag_rows(result)), "<ul>"]
    parts += [f"<li><b>{esc(f.replace('_', ' '))}</b>: {esc(r)}</li>" for f, r in result["flag_rules"].items()]
    parts.append("</ul>")
    for name in [*result["models"], "reference"]:
        ex = [(f, e) for f in FLAGS for e in result["flags"][name][f]["examples"]]
        if ex:
            body = [[f.replace("_", " "), str(e["line"]), e["source"], e["output"], e["detail"]] for f, e in ex]
            parts.append(f"<details><summary>{esc(name)}: examples</summary>"
                         + _html_table(["flag", "line", "source", "output", "detail"], body, "gap")
                         + "</details>")
    return "".join(parts)


def _heading(result: dict) -> str:
    return "Where the students lose" if result["teacher"] else "Where the model loses"


def to_html(result: dict, srcs: Sequence[str], outputs: dict[str, list[str]] | None = None) -> str:
    """The analysis as one self-contained HTML fragment (its own style and script)."""
    esc = html.escape
    buckets = "".join(f"<h3>By {esc(t['title'])}</h3>" + _html_table(*bucket_rows(t))
                      for t in result["buckets"].values())
    return ('<section id="analysis">' + _CSS + f"<h2>{_heading(result)}</h2>"
            "<p>Sentence chrF against the reference; QE is each model's own length-normalised "
            "log-probability of its output, correlated with its sentence chrF.</p>"
            + _html_table(*summary_rows(result))
            + ("<h3>Largest gaps to the teacher</h3>" + gaps_html(result) if result["largest_gaps"] else "")
            + "<h3>Flags</h3>" + flags_html(result)
            + f"<h3>BLEU by bucket</h3><p>95% percentile bootstrap interval, "
              f"{result['bootstrap_resamples']} resamples of each bucket's sentences.</p>" + buckets
            + "<h3>Sentences</h3><p>Click a column header to sort (again to reverse); hover "
              "over a model's chrF to read its output.</p>"
            + sentence_table(result, srcs, outputs) + _SORT_JS + "</section>")


def standalone_page(title: str, fragment: str) -> str:
    esc = html.escape
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
            f"</style></head><body><h1>{esc(title)}</h1>{fragment}</body></html>")


# --- entry points --------------------------------------------------------------------------

def _run_outputs(rows: list[dict]) -> dict[str, dict]:
    """The test-set output each model is judged by: a teacher's widest beam, each student's
    greedy (as the report's summary and paired bootstrap compare them)."""
    test = [r for r in rows if r.get("split", "test") == "test" and Path(r["hyp_file"]).is_file()]
    names = sorted({r["name"] for r in test}, key=lambda n: (not n.startswith("teacher"), n))
    out = {}
    for name in names:
        mine = [r for r in test if r["name"] == name]
        beams = sorted({r["beam"] for r in mine})
        beam = beams[-1] if name.startswith("teacher") else beams[0]
        row = max((r for r in mine if r["beam"] == beam), key=lambda r: r["batch_size"])
        out[name] = {"file": row["hyp_file"], "beam": beam, "model": row.get("model")}
    return out


def _teacher_name(names: Sequence[str]) -> str | None:
    """'teacher' if there is one, else the first model whose name starts with 'teacher'."""
    if "teacher" in names:
        return "teacher"
    return next((n for n in names if n.startswith("teacher")), None)


def _model_dir(run: Path, name: str, recorded: str | None) -> Path:
    return run / name if (run / name / "model.keras").is_file() or not recorded else Path(recorded)


def analyze_run(run: str | Path, rows: list[dict], n_boot: int = 1000,
                log: Callable[[str], None] = print, qe: bool = True) -> tuple[list[str], str, dict]:
    """The analysis of a run's evaluation outputs for the report: (markdown lines, HTML
    fragment, JSON dict)."""
    run = Path(run)
    t0 = time.perf_counter()
    srcs, refs = read_lines(run / "data" / "test.src"), read_lines(run / "data" / "test.tgt")
    outputs = _run_outputs(rows)
    systems = {name: read_lines(o["file"]) for name, o in outputs.items()}
    scores = {}
    if qe:
        for name, o in outputs.items():
            hyp = Path(o["file"])  # RUN/eval/<model>/qe.beam1.bs64.json (not a metrics file name)
            cache = hyp.parent / f"qe.{hyp.name.removesuffix('.hyp.txt')}.json"
            scores[name] = cached_model_qe(_model_dir(run, name, o["model"]), srcs, systems[name], cache, log)
    stats = load_training_stats(run)
    _, tgt_lang = run_languages(run)
    result = analyze_systems(srcs, refs, systems, _teacher_name(list(systems)), stats, tgt_lang,
                             scores, n_boot)
    result["outputs"] = {name: {"file": Path(o["file"]).name, "beam": o["beam"]}
                         for name, o in outputs.items()}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"analysis: {len(systems)} models x {len(srcs)} sentences in {result['seconds']:.1f}s")
    return to_markdown(result), to_html(result, srcs, systems), result


def analyze_model(model_dir: str | Path, src: str | Path, ref: str | Path,
                  hyp: str | Path | None = None, run_dir: str | Path | None = None,
                  out: str | Path | None = None, beam: int = 1, tgt_lang: str | None = None,
                  n_boot: int = 1000, decode_cfg=None, log: Callable[[str], None] = print) -> Path:
    """`nmt-kd analyze`: one model's analysis (translating greedily unless `hyp` is given);
    writes OUT/analysis.{json,html,md} (default OUT: MODEL/analysis) and returns OUT."""
    from nmt_kd.errors import UserError
    from nmt_kd.translate import read_input_lines

    model_dir = Path(model_dir)
    srcs, refs = read_input_lines(str(src)), read_input_lines(str(ref), clean=False)
    if len(srcs) != len(refs):
        raise UserError(f"{src} has {len(srcs)} lines but {ref} has {len(refs)}")
    if hyp is not None:
        hyps = read_input_lines(str(hyp), clean=False)
        if len(hyps) != len(srcs):
            raise UserError(f"{hyp} has {len(hyps)} lines but {src} has {len(srcs)}")
    else:
        from nmt_kd.config import DecodeConfig
        from nmt_kd.translate import open_translator

        translator, _, _ = open_translator(model_dir, decode_cfg or DecodeConfig())
        hyps = translator.translate(srcs, beam=beam).hypotheses
    run = Path(run_dir) if run_dir else None
    name = model_dir.name
    result = analyze_systems(srcs, refs, {name: hyps}, None, load_training_stats(run),
                             tgt_lang or run_languages(run)[1],
                             {name: model_qe(model_dir, srcs, hyps, log)}, n_boot)
    result["outputs"] = {name: {"file": str(hyp) if hyp else f"greedy (beam {beam})", "beam": beam}}
    out = Path(out) if out else model_dir / "analysis"
    write_json(out / "analysis.json", result)
    with atomic_open(out / "analysis.md") as f:
        f.write("\n".join([f"# {name}: analysis", "", *to_markdown(result)]) + "\n")
    with atomic_open(out / "analysis.html") as f:
        f.write(standalone_page(f"{name}: analysis", to_html(result, srcs, {name: hyps})))
    log(f"analysis: {out / 'analysis.json'}, {out / 'analysis.html'}")
    return out
