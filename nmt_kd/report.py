"""The report: teacher and students side by side, quality against speed.

Reads:  RUN/eval/<model>/beam{B}.bs{N}.json (+ .hyp.txt), RUN/<model>/model.json and
        train_history.json, RUN/data/test.{src,tgt}.
Writes: RUN/report/report.md, RUN/report/report.html (self-contained, images embedded),
        RUN/report/metrics.json, RUN/report/*.png.

Nothing is decoded here: `nmt-kd report --run-dir DIR` rebuilds everything from the files.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

from nmt_kd import cpuload
from nmt_kd.analysis import LENGTH_BUCKETS
from nmt_kd.fileio import atomic_open, read_json, read_lines, write_json

ALPHA = 0.05  # family-wise error rate of the Holm-corrected tests


def split_seed(name: str) -> tuple[str, int | None]:
    """'rnn_seq.seed2' -> ('rnn_seq', 2); a name without a seed suffix -> (name, None)."""
    base, sep, seed = name.rpartition(".seed")
    return (base, int(seed)) if sep and seed.isdigit() else (name, None)


def load_rows(run: Path) -> list[dict]:
    """Every evaluation JSON under RUN/eval/<model>/: test (`beam*.bs*.json`) and valid
    (`valid.beam*.bs*.json`), each with its model's `name`, `row`, `seed` and `split`."""
    rows = []
    for f in sorted((run / "eval").glob("*/*beam*.bs*.json")):
        if not (f.name.startswith("beam") or f.name.startswith("valid.beam")):
            continue
        row = read_json(f)
        row["name"] = f.parent.name
        row["split"] = "valid" if f.name.startswith("valid.") else "test"
        row["row"], row["seed"] = split_seed(row["name"])
        meta = run / row["name"] / "model.json"
        if row["seed"] is None and meta.is_file():
            row["seed"] = read_json(meta).get("seed")
        row["hyp_file"] = str(f.with_suffix(".hyp.txt"))
        rows.append(row)
    if not any(r["split"] == "test" for r in rows):
        from nmt_kd.errors import UserError

        raise UserError(f"no evaluation results under {run / 'eval'}; run the evaluate stage first")
    return rows


def _pick(rows: list[dict], name: str, beam: int | None = None, batch: int | None = None,
          split: str = "test") -> dict | None:
    cands = [r for r in rows if r["name"] == name and (beam is None or r["beam"] == beam)
             and (batch is None or r["batch_size"] == batch) and r.get("split", "test") == split]
    return max(cands, key=lambda r: r["batch_size"]) if cands else None


def _order(names) -> list[str]:
    return sorted(set(names), key=lambda n: (not n.startswith("teacher"), n))


def _speeds(rows: list[dict], name: str, beams: tuple[int, int], batches: list[int]) -> dict:
    """sent/s greedy and beam per batch size, and the three labelled ratios to the teacher:
    greedy vs teacher greedy, beam vs teacher beam, greedy vs teacher beam (`speedup_bs*`)."""
    greedy, big = beams
    line = {}
    for b in batches:
        for label, beam in (("greedy", greedy), ("beam", big)):
            r = _pick(rows, name, beam, b)
            if r:
                line[f"{label}_sent_s_bs{b}"] = r["sentences_per_second"]
                line[f"{label}_tok_s_bs{b}"] = r["tokens_per_second"]
        for key, mine, theirs in (("speedup_greedy", greedy, greedy), ("speedup_beam", big, big),
                                  ("speedup", greedy, big)):
            r, ref = _pick(rows, name, mine, b), _pick(rows, "teacher", theirs, b)
            if r and ref:
                line[f"{key}_bs{b}"] = round(r["sentences_per_second"] / ref["sentences_per_second"], 2)
    return line


def summarize(rows: list[dict]) -> list[dict]:
    """One line per model (one seed of a row): quality greedy and best beam on test and valid,
    size, speeds, and ratios to the teacher."""
    test = [r for r in rows if r.get("split", "test") == "test"]
    beams = sorted({r["beam"] for r in test})
    batches = sorted({r["batch_size"] for r in test})
    big_beam, greedy = beams[-1], beams[0]
    t_quality = _pick(test, "teacher", big_beam)
    out = []
    for name in _order(r["name"] for r in test):
        g, bb = _pick(rows, name, greedy), _pick(rows, name, big_beam)
        any_row = g or bb
        line = {"name": name, "row": any_row.get("row", name), "seed": any_row.get("seed"),
                "model_type": any_row["model_type"], "kd": any_row["kd"],
                "params": any_row["params"], "size_mb": round(any_row.get("size_bytes", 0) / 2**20, 2),
                "bleu_greedy": g["bleu"] if g else None, "bleu_beam": bb["bleu"] if bb else None,
                "chrf_greedy": g["chrf"] if g else None, "chrf_beam": bb["chrf"] if bb else None,
                "ter_greedy": g["ter"] if g else None, "beam": big_beam}
        for label, beam in (("greedy", greedy), ("beam", big_beam)):
            v = _pick(rows, name, beam, split="valid")
            line[f"bleu_{label}_valid"] = v["bleu"] if v else None
        if name == "teacher":  # its own ratios would compare it with itself
            line.update({k: v for k, v in _speeds(test, name, (greedy, big_beam), batches).items()
                         if not k.startswith("speedup")})
            out.append(line)
            continue
        line.update(_speeds(test, name, (greedy, big_beam), batches))
        if t_quality and g:
            line["bleu_retained_pct"] = round(100 * g["bleu"] / t_quality["bleu"], 1) if t_quality["bleu"] else None
        out.append(line)
    return out


# per-seed values gathered for each row: (key in the row object, key in the model's line)
SEED_KEYS = (("bleu_greedy_valid", "bleu_greedy_valid"), ("bleu_beam_valid", "bleu_beam_valid"),
             ("bleu_greedy_test", "bleu_greedy"), ("bleu_beam_test", "bleu_beam"),
             ("chrf_greedy_test", "chrf_greedy"), ("chrf_beam_test", "chrf_beam"),
             ("ter_greedy_test", "ter_greedy"))


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return round(mean, 2), None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)  # sample standard deviation
    return round(mean, 2), round(var ** 0.5, 2)


def group_rows(run: Path, summary: list[dict]) -> list[dict]:
    """One object per row (a teacher, or a student over its seeds): arch, kd, params, seeds,
    the per-seed lists of SEED_KEYS and of every speed field, and their mean and std."""
    out = []
    for row in _order(line["row"] for line in summary):
        lines = sorted((x for x in summary if x["row"] == row),
                       key=lambda x: (x["seed"] is None, x["seed"] or 0))
        first = lines[0]
        obj = {"name": row, "arch": first["model_type"], "kd": first["kd"], "params": first["params"],
               "size_mb": first["size_mb"], "beam": first["beam"],
               "seeds": [x["seed"] for x in lines], "models": [x["name"] for x in lines]}
        ens = run / first["name"] / "ensemble.json"
        if ens.is_file():
            obj["members"] = read_json(ens).get("members", [])
        speed_keys = sorted({k for x in lines for k in x if "_s_bs" in k or k.startswith("speedup")})
        obj["mean"], obj["std"] = {}, {}
        for key, src in [*SEED_KEYS, *((k, k) for k in speed_keys), ("bleu_retained_pct",) * 2]:
            obj[key] = [x.get(src) for x in lines]
            obj["mean"][key], obj["std"][key] = _mean_std(obj[key])
        obj["bleu_greedy"], obj["bleu_beam"] = obj["mean"]["bleu_greedy_test"], obj["mean"]["bleu_beam_test"]
        out.append(obj)
    recipes = _row_recipes(run)
    for obj in out:
        obj["recipe"] = recipes.get(obj["name"])
    for obj in out:
        if obj["kd"] != "none" and _is_student(obj):
            obj["baseline"], obj["baseline_note"] = _baseline(obj, out)
    return out


def _row_recipes(run: Path) -> dict[str, dict]:
    """Each pipeline student row's recipe (`StudentSpec.recipe`) from RUN/config.yaml, the
    config the pipeline ran with; {} where there is none (a run assembled by hand)."""
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    from nmt_kd.config import load_config

    cfg = load_config(path)
    return {spec.name: spec.recipe(cfg.student_train) for spec in cfg.pipeline.students}


def _is_student(g: dict) -> bool:
    return not g["name"].startswith("teacher")


def _baseline(row: dict, groups: list[dict]) -> tuple[str | None, str | None]:
    """The no-KD row a KD row is measured against, or why there is none: the same architecture
    and, where RUN/config.yaml gives both rows' recipes, the same recipe. A row trained with
    other settings (more updates, another learning rate...) would credit KD with their effect."""
    cands = [g for g in groups if g["kd"] == "none" and _is_student(g) and g["arch"] == row["arch"]]
    if not cands:
        return None, f"no {row['arch']} row without KD in this run"
    mine = row.get("recipe")
    same = [g for g in cands if mine is None or g.get("recipe") is None or g["recipe"] == mine]
    if same:
        return same[0]["name"], None
    other = cands[0]["recipe"]
    differ = sorted(k for k in {*mine, *other} if k != "arch" and mine.get(k) != other.get(k))
    return None, (f"no {row['arch']} row without KD trains as it does ({cands[0]['name']} differs in "
                  + ", ".join(f"{k}: {other.get(k)} against {mine.get(k)}" for k in differ) + ")")


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; each adjusted p is comparable to ALPHA)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _seed_pairs(row: dict, baseline: dict) -> list[tuple[str, str]]:
    """(model, baseline model) pairs: the same seed where both rows have it, else in order."""
    theirs = dict(zip(baseline["seeds"], baseline["models"], strict=True))
    if all(k in theirs for k in row["seeds"]) and None not in row["seeds"]:
        return [(m, theirs[k]) for k, m in zip(row["seeds"], row["models"], strict=True)]
    return list(zip(row["models"], baseline["models"], strict=False))


def _comparisons(rows: list[dict], groups: list[dict]) -> list[tuple]:
    """(baseline model, its beam, system model, its beam, role, decoding) for every test made:
    each KD row against its no-KD row (`_baseline`: same architecture, same recipe), seed pair
    by seed pair (greedy and beam), and each student model's greedy output against the
    teacher's beam."""
    test = [r for r in rows if r.get("split", "test") == "test"]
    beams = sorted({r["beam"] for r in test})
    greedy, big = beams[0], beams[-1]
    by_name = {g["name"]: g for g in groups}
    out = []
    for g in filter(_is_student, groups):
        b = by_name.get(g.get("baseline"))  # KD rows only (see `_baseline`)
        if b is not None:
            for mine, theirs in _seed_pairs(g, b):
                out.append((theirs, greedy, mine, greedy, "no-KD student", "greedy"))
                if big != greedy:
                    out.append((theirs, big, mine, big, "no-KD student", f"beam {big}"))
        if any(r["name"] == "teacher" for r in test):
            out += [("teacher", big, mine, greedy, "teacher", f"greedy vs teacher beam {big}")
                    for mine in g["models"]]
    return out


def bootstrap_resamples(n_comparisons: int, requested: int = 1000) -> int:
    """Resamples for `n_comparisons` paired bootstrap tests under Holm's correction: at least
    `requested`, and enough that the test can still reject. A bootstrap p-value cannot fall
    below about 1/n (n resamples), and Holm multiplies the smallest p by the number of
    comparisons m, so with n = 1,000 and m >= 50 no difference, however large, could be called
    significant at ALPHA. This keeps m/n at or below ALPHA/10 (rounded up to thousands)."""
    need = -(-10 * n_comparisons * 1000 // round(ALPHA * 1000))  # ceil(10 m / ALPHA), in integers
    return max(requested, -(-need // 1000) * 1000)


def significance(run: Path, rows: list[dict], n_samples: int = 1000,
                 groups: list[dict] | None = None) -> list[dict]:
    """Paired bootstrap (sacreBLEU) on the test set for every comparison of `_comparisons`,
    with Holm's correction over all of them (`p_holm`, `significant` at ALPHA). Each test takes
    `bootstrap_resamples(m, n_samples)` resamples, m the number of comparisons made."""
    from nmt_kd.evaluate import paired_bootstrap

    refs = read_lines(run / "data" / "test.tgt")
    groups = groups if groups is not None else group_rows(run, summarize(rows))

    def hyps(name: str, beam: int) -> list[str] | None:
        r = _pick(rows, name, beam)
        return read_lines(r["hyp_file"]) if r and Path(r["hyp_file"]).is_file() else None

    todo = []
    for base_name, base_beam, name, beam, role, decoding in _comparisons(rows, groups):
        mine, other = hyps(name, beam), hyps(base_name, base_beam)
        if mine is not None and other is not None:
            todo.append((base_name, other, name, mine, role, decoding))
    n = bootstrap_resamples(len(todo), n_samples)
    results = []
    for base_name, other, name, mine, role, decoding in todo:
        results.append({"system": name, "row": split_seed(name)[0], "against": base_name,
                        "against_role": role, "decoding": decoding, "split": "test",
                        "bootstrap_resamples": n,
                        **paired_bootstrap((base_name, other), (name, mine), refs, n)})
    for r, adj in zip(results, holm([r["p_value"] for r in results]), strict=True):
        r["p_holm"] = round(adj, 4)
        r["significant"] = adj < ALPHA
    for g in groups:  # the KD row's verdict against its no-KD row (greedy): its weakest seed pair
        ps = [r["p_holm"] for r in results if r["row"] == g["name"]
              and r["against_role"] == "no-KD student" and r["decoding"] == "greedy"]
        g["p_kd_vs_none"] = max(ps) if ps else None
    return results


def headline(groups: list[dict], sig: list[dict], speed_caveat: str | None = None) -> str | None:
    """The answer in one sentence: the distilled student chosen on valid greedy BLEU, how much
    of the teacher's beam BLEU it keeps, how much faster it is (with `speed_caveat` beside the
    ratio when the timing cannot be trusted, see `nmt_kd.cpuload.caveat`), and what KD added."""
    teacher = next((g for g in groups if g["name"] == "teacher"), None)
    kd = [g for g in groups if _is_student(g) and g["kd"] != "none"]
    if teacher is None or not kd:
        return None
    pick = max(kd, key=lambda g: (g["mean"]["bleu_greedy_valid"] or -1, g["bleu_greedy"] or -1))
    mean, beam, t_beam = pick["mean"], pick["beam"], teacher["bleu_beam"]
    if pick["bleu_greedy"] is None or not t_beam:
        return None
    batch = max((int(k.split("bs")[-1]) for k in mean if k.startswith("speedup_bs")), default=None)
    seeds = len(pick["seeds"])
    chosen = ("best greedy BLEU on valid" if mean["bleu_greedy_valid"] is not None
              else "no valid scores in this run: best greedy BLEU on test")
    text = (f"The distilled {pick['name']} student ({chosen}; {pick['arch']}, {pick['kd']}-KD, "
            f"{pick['params']:,} parameters{f', mean of {seeds} seeds' if seeds > 1 else ''}) "
            f"keeps {100 * pick['bleu_greedy'] / t_beam:.1f}% of the teacher's BLEU with greedy "
            f"decoding ({pick['bleu_greedy']:.2f} against the teacher's {t_beam:.2f} with beam {beam} on test)")
    if batch is not None and mean.get(f"speedup_bs{batch}"):
        text += (f" and translates {mean[f'speedup_bs{batch}']:.1f}x as many sentences per second "
                 f"at batch {batch} (greedy against the teacher's beam {beam}; "
                 f"{mean.get(f'speedup_greedy_bs{batch}') or 0:.1f}x greedy against greedy"
                 + (f"; {speed_caveat}" if speed_caveat else "") + ")")
    base = next((g for g in groups if g["name"] == pick.get("baseline")), None)
    if base is None and pick.get("baseline_note"):
        text += f"; what KD added to it is not measured in this run: {pick['baseline_note']}"
    if base is not None and base["bleu_greedy"] is not None:
        p = pick.get("p_kd_vs_none")
        text += (f"; KD added {pick['bleu_greedy'] - base['bleu_greedy']:+.2f} BLEU (greedy, test) "
                 f"over the same student without KD ({base['name']}"
                 + (f", paired bootstrap p = {p:.4f}, Holm-corrected"
                    + (", the largest over the seed pairs" if seeds > 1 else "") if p is not None else "")
                 + ")")
    return text + "."


def first_models(groups: list[dict]) -> list[str]:
    """One model per row (its first seed): what the per-model plots and examples show."""
    return [g["models"][0] for g in groups]


def length_buckets(run: Path, rows: list[dict], names: list[str] | None = None) -> dict[str, list[float | None]]:
    """Corpus BLEU per source-length bucket (words), greedy, per model (`names`: all)."""
    from sacrebleu.metrics import BLEU

    src, refs = read_lines(run / "data" / "test.src"), read_lines(run / "data" / "test.tgt")
    lens = [len(s.split()) for s in src]
    greedy = min(r["beam"] for r in rows)
    out = {}
    for name in names or _order(r["name"] for r in rows):
        r = _pick(rows, name, greedy)
        if not r or not Path(r["hyp_file"]).is_file():
            continue
        hyp = read_lines(r["hyp_file"])
        scores = []
        for lo, hi in LENGTH_BUCKETS:
            idx = [i for i, n in enumerate(lens) if lo <= n <= hi]
            scores.append(round(BLEU().corpus_score([hyp[i] for i in idx], [[refs[i] for i in idx]]).score, 2)
                          if idx else None)
        out[name] = scores
    return out


def _plots(run: Path, groups: list[dict], buckets: dict, out: Path) -> list[Path]:
    """The report's three figures: quality against speed, training curves, BLEU by length."""
    import matplotlib

    matplotlib.use("Agg")
    return [_speed_plot(groups, out), _curves_plot(run, groups, out), _length_plot(buckets, out)]


def _speed_plot(groups: list[dict], out: Path) -> Path:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    batch = max((int(k.split("bs")[-1]) for g in groups for k in g["mean"]
                 if k.startswith("greedy_sent_s_bs")), default=None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in groups:  # every row at greedy (circle) and at beam (square), joined by a line
        pts = [(g["mean"].get(f"{dec}_sent_s_bs{batch}"), g["mean"][f"bleu_{dec}_test"], m)
               for dec, m in (("greedy", "o"), ("beam", "s"))]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", alpha=0.5, label=g["name"])
        for x, y, marker in pts:
            ax.scatter(x, y, marker=marker, s=40, color=line.get_color())
        ax.annotate(g["name"], pts[0][:2], textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.scatter([], [], marker="o", color="gray", label="greedy")
    ax.scatter([], [], marker="s", color="gray", label=f"beam {groups[0]['beam'] if groups else ''}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"sentences/s at batch {batch}, each model's own decoding (log scale)")
    ax.set_ylabel("BLEU on test (mean over seeds)")
    ax.set_title("Quality against decoding speed: greedy (o) and beam (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out / "bleu_vs_speed.png")


def _curves_plot(run: Path, groups: list[dict], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in first_models(groups):
        line = {"name": name}
        hist_file = run / name / "train_history.json"
        if not hist_file.is_file():
            continue
        saved = read_json(hist_file)
        evals, curve = saved["evals"], saved.get("train", [])
        color = None
        if curve:  # the training loss every log_every steps
            (handle,) = a1.plot([e["step"] for e in curve], [e["loss"] for e in curve], "--",
                                linewidth=1, label=f"{line['name']} train")
            color = handle.get_color()
        elif any("train_loss" in e for e in evals):
            (handle,) = a1.plot([e["step"] for e in evals if "train_loss" in e],
                                [e["train_loss"] for e in evals if "train_loss" in e], "--",
                                label=f"{line['name']} train")
            color = handle.get_color()
        if evals:
            a1.plot([e["step"] for e in evals], [e["valid_loss"] for e in evals], "o-",
                    color=color, markersize=4, label=f"{line['name']} valid")
        if any("valid_bleu" in e for e in evals):
            a2.plot([e["step"] for e in evals if "valid_bleu" in e],
                    [e["valid_bleu"] for e in evals if "valid_bleu" in e], label=line["name"])
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a2.set_xlabel("step")
    a2.set_ylabel("valid BLEU (greedy)")
    histories = [n for n in first_models(groups) if (run / n / "train_history.json").is_file()]
    if not histories:  # e.g. a report rebuilt from committed results, without the run's models
        for axis in (a1, a2):
            axis.text(0.5, 0.5, "no train_history.json in\nthis run directory", ha="center",
                      va="center", transform=axis.transAxes, fontsize=9, color="gray")
    elif not a2.get_lines():
        a2.text(0.5, 0.5, "no validation BLEU recorded\n(train.eval_every: 0, or\nearly_stop_metric: loss)",
                ha="center", va="center", transform=a2.transAxes, fontsize=9, color="gray")
    for axis in (a1, a2):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    fig.suptitle("Training and validation curves")
    return _save(fig, out / "training_curves.png")


def _length_plot(buckets: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{lo}-{hi}" if hi < 10**9 else f"{lo}+" for lo, hi in LENGTH_BUCKETS]
    width = 0.8 / max(len(buckets), 1)
    for k, (name, scores) in enumerate(buckets.items()):
        ax.bar([i + k * width for i in range(len(labels))], [s or 0 for s in scores], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
    ax.set_xlabel("source length (words)")
    ax.set_ylabel("BLEU (greedy)")
    ax.legend(fontsize=7)
    ax.set_title("BLEU by source length")
    return _save(fig, out / "bleu_by_length.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ms(g: dict, key: str, digits: int = 2) -> str:
    """'mean ± std' of one per-seed field of a row ('mean' alone for one seed)."""
    mean, std = g["mean"].get(key), g["std"].get(key)
    return _fmt(mean, digits) + (f" ± {std:.{digits}f}" if std is not None else "")


def _quality_table(groups: list[dict]) -> tuple[list[str], list[list[str]]]:
    beam = groups[0]["beam"] if groups else 0
    head = ["row", "arch", "kd", "params", "seeds", "BLEU greedy valid", "BLEU greedy test",
            f"BLEU beam {beam} valid", f"BLEU beam {beam} test", "chrF greedy test", "TER greedy test",
            f"BLEU retained % (greedy / teacher beam {beam})"]
    body = [[g["name"], g["arch"], g["kd"], _fmt(g["params"]), str(len(g["seeds"])),
             _ms(g, "bleu_greedy_valid"), _ms(g, "bleu_greedy_test"), _ms(g, "bleu_beam_valid"),
             _ms(g, "bleu_beam_test"), _ms(g, "chrf_greedy_test"), _ms(g, "ter_greedy_test"),
             _ms(g, "bleu_retained_pct", 1)] for g in groups]
    return head, body


def _speed_table(groups: list[dict]) -> tuple[list[str], list[list[str]]]:
    batches = sorted({int(k.split("bs")[-1]) for g in groups for k in g["mean"] if "_sent_s_bs" in k})
    beam = groups[0]["beam"] if groups else 0
    head = ["row"]
    for b in batches:
        head += [f"greedy sent/s bs{b}", f"beam {beam} sent/s bs{b}",
                 f"greedy vs teacher greedy bs{b}", f"beam {beam} vs teacher beam {beam} bs{b}",
                 f"greedy vs teacher beam {beam} bs{b}"]
    body = []
    for g in groups:
        row = [g["name"]]
        for b in batches:
            row += [_ms(g, f"greedy_sent_s_bs{b}", 1), _ms(g, f"beam_sent_s_bs{b}", 1)]
            row += [(_fmt(g["mean"].get(f"{k}_bs{b}"), 2) + "x") if g["mean"].get(f"{k}_bs{b}") else "-"
                    for k in ("speedup_greedy", "speedup_beam", "speedup")]
        body.append(row)
    return head, body


def _seed_table(groups: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "row", "seed", "BLEU greedy valid", "BLEU greedy test", "BLEU beam valid",
            "BLEU beam test", "chrF greedy test"]
    body = []
    for g in groups:
        for i, name in enumerate(g["models"]):
            body.append([name, g["name"], _fmt(g["seeds"][i])] + [
                _fmt(g[k][i]) for k in ("bleu_greedy_valid", "bleu_greedy_test", "bleu_beam_valid",
                                        "bleu_beam_test", "chrf_greedy_test")])
    return head, body


def _sig_table(sig: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["system", "against", "decoding", "BLEU", "baseline BLEU", "delta", "p", "p (Holm)",
            f"significant (Holm, {ALPHA})"]
    body = [[s["system"], f"{s['against']} ({s['against_role']})", s["decoding"], f"{s['bleu']:.2f}",
             f"{s['baseline_bleu']:.2f}", f"{s['delta']:+.2f}", f"{s['p_value']:.4f}",
             f"{s['p_holm']:.4f}", "yes" if s["significant"] else "no"] for s in sig]
    return head, body


def _baseline_table(groups: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["KD row", "kd", "measured against (no KD)", "why not"]
    body = [[g["name"], g["kd"], g.get("baseline") or "-", g.get("baseline_note") or ""]
            for g in groups if "baseline" in g]
    return head, body


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in body]


def _html_table(head: list[str], body: list[list[str]]) -> str:
    esc = html.escape
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
            + "</table>")


def _examples(run: Path, rows: list[dict], names: list[str], n: int = 4) -> list[dict]:
    src, refs = read_lines(run / "data" / "test.src"), read_lines(run / "data" / "test.tgt")
    greedy = min(r["beam"] for r in rows)
    beams = max(r["beam"] for r in rows)
    systems = {}
    for name in names:
        r = _pick(rows, name, beams if name.startswith("teacher") else greedy)
        if r and Path(r["hyp_file"]).is_file():
            systems[f"{name} ({'beam ' + str(r['beam']) if r['beam'] > 1 else 'greedy'})"] = read_lines(r["hyp_file"])
    picks = [i for i in range(len(src)) if 8 <= len(src[i].split()) <= 20][:: max(1, len(src) // 40)][:n]
    return [{"source": src[i], "reference": refs[i], **{k: v[i] for k, v in systems.items()}} for i in picks]


def terminal_summary(metrics: dict, html_path: Path, seconds: float | None = None) -> str:
    """The end of `nmt-kd pipeline` on a terminal: the headline, one line per row (BLEU greedy
    and beam on test, mean over seeds, and speed at the largest batch size), the report's path."""
    rows = metrics.get("rows", [])
    beam = rows[0]["beam"] if rows else 0
    batch = max((int(k.split("bs")[-1]) for r in rows for k in r.get("mean", {})
                 if k.startswith("greedy_sent_s_bs")), default=None)
    head = f"{'row':<18} {'kd':<9} {'seeds':>5} {'BLEU greedy':>11} {f'BLEU beam {beam}':>11}"
    if batch:
        head += f" {f'greedy sent/s bs{batch}':>20} {f'vs teacher beam {beam}':>18}"
    lines = ["", head, "-" * len(head)]
    for r in rows:
        mean = r.get("mean", {})
        line = (f"{r['name']:<18} {r['kd']:<9} {len(r['seeds']):>5} {_fmt(r.get('bleu_greedy')):>11} "
                f"{_fmt(r.get('bleu_beam')):>11}")
        if batch:
            ratio = mean.get(f"speedup_bs{batch}")
            line += (f" {_fmt(mean.get(f'greedy_sent_s_bs{batch}'), 1):>20} "
                     f"{(_fmt(ratio) + 'x') if ratio else '-':>18}")
        lines.append(line)
    if metrics.get("headline"):
        lines += ["", metrics["headline"]]
    took = f" (pipeline {seconds / 60:.1f} min)" if seconds is not None else ""
    lines += ["", f"report: {html_path}{took}"]
    return "\n".join(lines)


SECTIONS = (("Quality", _quality_table), ("Speed", _speed_table), ("Every seed", _seed_table))


def build_report(run_dir: str | Path, title: str = "nmt-kd report", bootstrap: int = 1000,
                 log: Callable[[str], None] = print) -> Path:
    run = Path(run_dir)
    out = run / "report"
    rows = load_rows(run)
    summary = summarize(rows)
    groups = group_rows(run, summary)
    sig = significance(run, rows, bootstrap, groups) if bootstrap else []
    shown = first_models(groups)
    buckets = length_buckets(run, rows, shown)
    plots = _plots(run, groups, buckets, out)
    examples = _examples(run, rows, shown)
    from nmt_kd.analysis import analyze_run  # one-way: report imports analysis, not back

    analysis_md, analysis_html, analysis = analyze_run(run, rows, bootstrap or 1000, log)
    test_rows = [r for r in rows if r["split"] == "test"]
    loads = [r.get("cpu_other_share") for r in test_rows]
    speed_caveat = cpuload.caveat(loads)
    answer = headline(groups, sig, speed_caveat)
    write_json(out / "metrics.json", {
        "headline": answer,
        # other processes' share of the CPU during the timed passes (nmt_kd.cpuload)
        "timing": {"cpu_other_share_max": max((x for x in loads if x is not None), default=None),
                   "passes": len(loads), "passes_not_recorded": sum(x is None for x in loads),
                   "caveat": speed_caveat},
        "rows": groups, "models": summary, "significance": sig,
        "evaluations": rows, "bleu_by_length": {"buckets": [list(b) for b in LENGTH_BUCKETS], **buckets},
        "analysis": analysis})
    signature, test_set = test_rows[0]["bleu_signature"], test_rows[0]["test_set"]
    intro = (f"Test set: `{test_set}` ({test_rows[0]['n_sentences']} sentences); valid columns are "
             f"the run's valid split. sacreBLEU signature: `{signature}`. Rows with several seeds show "
             "mean ± sample standard deviation. Speeds were measured on "
             f"{test_rows[0].get('machine', {}).get('cpu', 'this machine')}, each column's decoding named "
             "in its header; a ratio divides the row's sentences/s by the teacher's at the same batch size. "
             + cpuload.describe(loads))
    tables = [(name, fn(groups)) for name, fn in SECTIONS]
    if any("baseline" in g for g in groups):
        tables.append(("KD rows and the no-KD row each is tested against (same architecture, "
                       "same training recipe)", _baseline_table(groups)))
    if sig:
        tables.append((f"Paired bootstrap (sacreBLEU, {sig[0]['bootstrap_resamples']:,} resamples), "
                       f"Holm-corrected over all {len(sig)} comparisons", _sig_table(sig)))
    md = [f"# {title}", ""] + ([f"**{answer}**", ""] if answer else []) + [intro, ""]
    for name, (head, body) in tables:
        md += [f"## {name}", "", *_md_table(head, body), ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    md += ["", "## Examples", ""]
    for ex in examples:
        md += [f"- **{k}**: {v}" for k, v in ex.items()] + [""]
    md += ["", *analysis_md]
    with atomic_open(out / "report.md") as f:
        f.write("\n".join(md) + "\n")
    with atomic_open(out / "report.html") as f:
        page = _html_page(title, answer, intro, tables, plots, examples)
        f.write(page.replace("</body>", analysis_html + "</body>", 1))
    log(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return out / "report.md"


def _html_page(title, answer, intro, tables, plots, examples) -> str:
    esc = html.escape

    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"></figure>'

    ex_html = "".join("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in ex.items()) + "</dl>"
                      for ex in examples)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
            "img{max-width:100%}dt{font-weight:bold}dl{border-top:1px solid #ddd;padding-top:6px}"
            ".answer{font-size:1.1em;background:#eef6ee;padding:8px}</style>"
            f"</head><body><h1>{esc(title)}</h1>"
            + (f"<p class='answer'><strong>{esc(answer)}</strong></p>" if answer else "")
            + f"<p>{esc(intro)}</p>"
            + "".join(f"<h2>{esc(name)}</h2>{_html_table(head, body)}" for name, (head, body) in tables)
            + "<h2>Plots</h2>" + "".join(img(p) for p in plots)
            + f"<h2>Examples</h2>{ex_html}</body></html>")
