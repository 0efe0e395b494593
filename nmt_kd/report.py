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

from nmt_kd.fileio import atomic_open, read_json, read_lines, write_json

LENGTH_BUCKETS = ((1, 10), (11, 20), (21, 30), (31, 10**9))


def load_rows(run: Path) -> list[dict]:
    rows = []
    for f in sorted((run / "eval").glob("*/beam*.bs*.json")):
        row = read_json(f)
        row["name"] = f.parent.name
        row["hyp_file"] = str(f.with_suffix(".hyp.txt"))
        rows.append(row)
    if not rows:
        from nmt_kd.errors import UserError

        raise UserError(f"no evaluation results under {run / 'eval'}; run the evaluate stage first")
    return rows


def _pick(rows: list[dict], name: str, beam: int | None = None, batch: int | None = None) -> dict | None:
    cands = [r for r in rows if r["name"] == name and (beam is None or r["beam"] == beam)
             and (batch is None or r["batch_size"] == batch)]
    return max(cands, key=lambda r: r["batch_size"]) if cands else None


def summarize(rows: list[dict]) -> list[dict]:
    """One line per model: quality greedy and best beam, size, speeds, ratios to the teacher."""
    names = sorted({r["name"] for r in rows}, key=lambda n: (n != "teacher", n))
    beams = sorted({r["beam"] for r in rows})
    batches = sorted({r["batch_size"] for r in rows})
    big_beam, greedy = beams[-1], beams[0]
    teacher_ref = {b: _pick(rows, "teacher", big_beam, b) for b in batches}
    t_quality = _pick(rows, "teacher", big_beam)
    out = []
    for name in names:
        g, bb = _pick(rows, name, greedy), _pick(rows, name, big_beam)
        any_row = g or bb
        line = {"name": name, "model_type": any_row["model_type"], "kd": any_row["kd"],
                "params": any_row["params"], "size_mb": round(any_row.get("size_bytes", 0) / 2**20, 2),
                "bleu_greedy": g["bleu"] if g else None, "bleu_beam": bb["bleu"] if bb else None,
                "chrf_greedy": g["chrf"] if g else None, "ter_greedy": g["ter"] if g else None,
                "beam": big_beam}
        for b in batches:
            r = _pick(rows, name, greedy, b)
            if r:
                line[f"greedy_sent_s_bs{b}"] = r["sentences_per_second"]
                line[f"greedy_tok_s_bs{b}"] = r["tokens_per_second"]
                ref = teacher_ref.get(b)
                if ref:
                    line[f"speedup_bs{b}"] = round(r["sentences_per_second"] / ref["sentences_per_second"], 2)
        if t_quality and g:
            line["bleu_retained_pct"] = round(100 * g["bleu"] / t_quality["bleu"], 1) if t_quality["bleu"] else None
        out.append(line)
    return out


def significance(run: Path, rows: list[dict], n_samples: int = 1000) -> list[dict]:
    """Paired bootstrap (sacreBLEU) of each student's greedy output against the teacher's best
    beam and against the no-KD student of the same architecture."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    refs = read_lines(run / "data" / "test.tgt")
    beams = sorted({r["beam"] for r in rows})

    def hyps(name: str, beam: int) -> list[str] | None:
        r = _pick(rows, name, beam)
        return read_lines(r["hyp_file"]) if r and Path(r["hyp_file"]).is_file() else None

    teacher = hyps("teacher", beams[-1])
    baselines = {r["model_type"]: r["name"] for r in rows if r["kd"] == "none" and r["name"] != "teacher"}
    results = []
    for name in sorted({r["name"] for r in rows} - {"teacher"}):
        mine = hyps(name, beams[0])
        mtype = _pick(rows, name)["model_type"]
        for label, other_name, other in (("teacher", "teacher", teacher),
                                         ("no-KD student", baselines.get(mtype), None)):
            if other_name is None or other_name == name or mine is None:
                continue
            other = other if other is not None else hyps(other_name, beams[0])
            if other is None:
                continue
            test = PairedTest([(other_name, other), (name, mine)], {"BLEU": BLEU()}, [refs],
                              test_type="bs", n_samples=n_samples)
            sigs, res = test()
            base, sys_ = res["BLEU"][0], res["BLEU"][1]
            results.append({"system": name, "against": other_name, "against_role": label,
                            "bleu": round(sys_.score, 2), "baseline_bleu": round(base.score, 2),
                            "p_value": round(float(sys_.p_value), 4), "signature": str(sigs["BLEU"])})
    return results


def length_buckets(run: Path, rows: list[dict]) -> dict[str, list[float | None]]:
    """Corpus BLEU per source-length bucket (words), greedy, per model."""
    from sacrebleu.metrics import BLEU

    src, refs = read_lines(run / "data" / "test.src"), read_lines(run / "data" / "test.tgt")
    lens = [len(s.split()) for s in src]
    greedy = min(r["beam"] for r in rows)
    out = {}
    for name in sorted({r["name"] for r in rows}, key=lambda n: (n != "teacher", n)):
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


def _plots(run: Path, summary: list[dict], buckets: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    batch = max(int(k.split("bs")[-1]) for line in summary for k in line if k.startswith("greedy_sent_s_bs"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for line in summary:
        x = line.get(f"greedy_sent_s_bs{batch}")
        if x is not None and line["bleu_greedy"] is not None:
            ax.scatter(x, line["bleu_greedy"], s=40)
            ax.annotate(line["name"], (x, line["bleu_greedy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"greedy sentences/s at batch {batch} (log scale)")
    ax.set_ylabel("BLEU (greedy)")
    ax.set_title("Quality against decoding speed")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "bleu_vs_speed.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for line in summary:
        hist_file = run / line["name"] / "train_history.json"
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
    if not a2.get_lines():
        a2.text(0.5, 0.5, "no validation BLEU recorded\n(train.eval_every: 0, or\nearly_stop_metric: loss)",
                ha="center", va="center", transform=a2.transAxes, fontsize=9, color="gray")
    for axis in (a1, a2):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    fig.suptitle("Training and validation curves")
    paths.append(_save(fig, out / "training_curves.png"))

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
    paths.append(_save(fig, out / "bleu_by_length.png"))
    return paths


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


def _table(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    batches = sorted({int(k.split("bs")[-1]) for line in summary for k in line if k.startswith("speedup_bs")})
    beam = summary[0]["beam"] if summary else 0
    head = ["model", "kd", "BLEU greedy", f"BLEU beam {beam}", "chrF", "TER", "params", "MB"]
    for b in batches:
        head += [f"sent/s bs{b}", f"tok/s bs{b}", f"speed-up bs{b}"]
    head.append("BLEU retained %")
    body = []
    for line in summary:
        row = [line["name"], line["kd"], _fmt(line["bleu_greedy"]), _fmt(line["bleu_beam"]),
               _fmt(line["chrf_greedy"]), _fmt(line["ter_greedy"]), _fmt(line["params"]), _fmt(line["size_mb"])]
        for b in batches:
            row += [_fmt(line.get(f"greedy_sent_s_bs{b}"), 1), _fmt(line.get(f"greedy_tok_s_bs{b}"), 0),
                    _fmt(line.get(f"speedup_bs{b}"), 1) + "x" if line.get(f"speedup_bs{b}") else "-"]
        row.append(_fmt(line.get("bleu_retained_pct"), 1))
        body.append(row)
    return head, body


def _examples(run: Path, rows: list[dict], n: int = 4) -> list[dict]:
    src, refs = read_lines(run / "data" / "test.src"), read_lines(run / "data" / "test.tgt")
    greedy = min(r["beam"] for r in rows)
    beams = max(r["beam"] for r in rows)
    systems = {}
    for name in sorted({r["name"] for r in rows}, key=lambda x: (x != "teacher", x)):
        r = _pick(rows, name, beams if name == "teacher" else greedy)
        if r and Path(r["hyp_file"]).is_file():
            systems[f"{name} ({'beam ' + str(r['beam']) if r['beam'] > 1 else 'greedy'})"] = read_lines(r["hyp_file"])
    picks = [i for i in range(len(src)) if 8 <= len(src[i].split()) <= 20][:: max(1, len(src) // 40)][:n]
    return [{"source": src[i], "reference": refs[i], **{k: v[i] for k, v in systems.items()}} for i in picks]


def build_report(run_dir: str | Path, title: str = "nmt-kd report", bootstrap: int = 1000,
                 log: Callable[[str], None] = print) -> Path:
    run = Path(run_dir)
    out = run / "report"
    rows = load_rows(run)
    summary = summarize(rows)
    sig = significance(run, rows, bootstrap) if bootstrap else []
    buckets = length_buckets(run, rows)
    plots = _plots(run, summary, buckets, out)
    examples = _examples(run, rows)
    write_json(out / "metrics.json", {"rows": rows, "summary": summary, "significance": sig,
                                      "bleu_by_length": {"buckets": [list(b) for b in LENGTH_BUCKETS], **buckets}})
    head, body = _table(summary)
    signature = rows[0]["bleu_signature"]
    test_set = rows[0]["test_set"]
    md = [f"# {title}", "", f"Test set: `{test_set}` ({rows[0]['n_sentences']} sentences). "
          f"sacreBLEU signature: `{signature}`. Speeds are greedy decoding on "
          f"{rows[0].get('machine', {}).get('cpu', 'this machine')}; speed-up is against the teacher's "
          f"beam-{summary[0]['beam']} speed at the same batch size; BLEU retained is greedy student "
          "BLEU over beam teacher BLEU.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    if sig:
        md += ["", "## Paired bootstrap (sacreBLEU)", "", "| system | against | BLEU | baseline BLEU | p |",
               "|---|---|---|---|---|"]
        md += [f"| {s['system']} | {s['against']} ({s['against_role']}) | {s['bleu']:.2f} | "
               f"{s['baseline_bleu']:.2f} | {s['p_value']:.4f} |" for s in sig]
    md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    md += ["", "## Examples", ""]
    for ex in examples:
        md += [f"- **{k}**: {v}" for k, v in ex.items()] + [""]
    with atomic_open(out / "report.md") as f:
        f.write("\n".join(md) + "\n")

    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{p.stem}" src="data:image/png;base64,{data}"></figure>'

    esc = html.escape
    table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")
    sig_html = "" if not sig else (
        "<h2>Paired bootstrap (sacreBLEU)</h2><table><tr><th>system</th><th>against</th><th>BLEU</th>"
        "<th>baseline BLEU</th><th>p</th></tr>" + "".join(
            f"<tr><td>{esc(s['system'])}</td><td>{esc(s['against'])}</td><td>{s['bleu']:.2f}</td>"
            f"<td>{s['baseline_bleu']:.2f}</td><td>{s['p_value']:.4f}</td></tr>" for s in sig) + "</table>")
    ex_html = "".join("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in ex.items()) + "</dl>"
                      for ex in examples)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
            "img{max-width:100%}dt{font-weight:bold}dl{border-top:1px solid #ddd;padding-top:6px}</style>"
            f"</head><body><h1>{esc(title)}</h1><p>Test set <code>{esc(test_set)}</code>; sacreBLEU "
            f"<code>{esc(signature)}</code></p>{table}{sig_html}<h2>Plots</h2>"
            + "".join(img(p) for p in plots) + f"<h2>Examples</h2>{ex_html}</body></html>")
    with atomic_open(out / "report.html") as f:
        f.write(page)
    log(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return out / "report.md"
