"""The report and the command line carry the distillation-gap analysis (nmt_kd/analysis.py)."""

import json

import pytest
from test_analysis import (
    ENGLISH,
    assert_sorted_by_clicks,
    model_dirs,
    plant,
    report_run,
    sort_in_chromium,
)

from nmt_kd import analysis
from nmt_kd.fileio import read_lines, write_lines

__all__ = ["model_dirs"]  # the fixture, shared with test_analysis


def test_report_carries_the_analysis_for_teacher_and_every_student(tiny_run, model_dirs, tmp_path):
    from nmt_kd.report import build_report

    run = report_run(tiny_run, model_dirs, tmp_path)
    build_report(run, title="toy", bootstrap=0, log=lambda _m: None)
    result = json.loads((run / "report/metrics.json").read_text())["analysis"]
    assert result["models"] == ["teacher", "rnn_none", "rnn_seq"] and result["teacher"] == "teacher"
    assert set(result["sentence_qe"]) == set(result["models"])  # every model scored its output
    assert set(result["sentence_chrf_vs_teacher"]) == {"rnn_none", "rnn_seq"}
    assert all(result["flags"]["rnn_seq"][f]["count"] == 1 for f in analysis.FLAGS)
    assert all(result["flags"]["teacher"][f]["count"] == 0 for f in analysis.FLAGS)
    assert set(result["buckets"]) == {"source_length", "rarest_subword", "unseen_source_words"}
    gaps = result["largest_gaps"]["rnn_seq"]  # the teacher is perfect; rnn_seq errs where planted
    _, where = plant(read_lines(run / "data/test.src"), read_lines(run / "data/test.tgt"))
    assert {g["line"] for g in gaps} == {i + 1 for i in where.values()}
    assert gaps[0]["teacher_chrf"] - gaps[0]["student_chrf"] == pytest.approx(gaps[0]["gap"], abs=0.01)
    md = (run / "report/report.md").read_text()
    for heading in ("## Where the students lose", "### Flags", "### BLEU by bucket",
                    "### Largest gap per student"):
        assert heading in md
    page = (run / "report/report.html").read_text()
    assert page.count('id="sentence-table"') == 1 and "<del>" in page and "src=\"http" not in page
    assert f'title="{ENGLISH}"' in page  # hovering over rnn_seq's chrF shows its output


def test_report_sentence_table_sorts_on_a_header_click_in_headless_chromium(
        tiny_run, model_dirs, tmp_path):
    """The report opens in a real browser and a click on a column header sorts the sentence
    table (NMT_KD_REQUIRE_CHROMIUM=1: a missing browser fails instead of skipping)."""
    from nmt_kd.report import build_report

    run = report_run(tiny_run, model_dirs, tmp_path)
    build_report(run, title="toy", bootstrap=0, log=lambda _m: None)
    result = sort_in_chromium((run / "report/report.html").read_text(), tmp_path, "rnn_seq chrF")
    assert_sorted_by_clicks(result, len(read_lines(run / "data/test.src")))


def test_analyze_translates_greedily_when_no_hypotheses_are_given(tiny_run, model_dirs, tmp_path):
    from nmt_kd.config import DecodeConfig

    run, _ = tiny_run
    out = analysis.analyze_model(model_dirs["teacher"], run / "data/test.src", run / "data/test.tgt",
                                 run_dir=run, out=tmp_path / "out", n_boot=50,
                                 decode_cfg=DecodeConfig(max_len_cap=32), log=lambda _m: None)
    result = json.loads((out / "analysis.json").read_text())
    assert result["models"] == ["teacher"] and result["outputs"]["teacher"]["beam"] == 1
    assert len(result["sentence_chrf"]["teacher"]) == len(read_lines(run / "data/test.src"))
    page = (out / "analysis.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'class="sortable"' in page
    assert (out / "analysis.md").read_text().startswith("# teacher: analysis")


def test_analyze_command(tiny_run, model_dirs, tmp_path):
    from nmt_kd.cli import main

    run, _ = tiny_run
    args = ["analyze", "--model", str(model_dirs["teacher"]), "--src", str(run / "data/test.src"),
            "--ref", str(run / "data/test.tgt")]
    write_lines(tmp_path / "hyp.txt", read_lines(run / "data/test.tgt"))
    assert main([*args, "--hyp", str(tmp_path / "hyp.txt"), "--run-dir", str(run),
                 "--out", str(tmp_path / "out"), "--bootstrap", "50"]) == 0
    result = json.loads((tmp_path / "out/analysis.json").read_text())
    assert result["summary"]["teacher"]["mean_sentence_chrf"] == 100.0
    assert result["buckets"]["rarest_subword"]["n"][-1] == 0  # toy words: < 1,000 times
    write_lines(tmp_path / "short.txt", ["Ein Hund."])
    assert main([*args, "--hyp", str(tmp_path / "short.txt")]) == 2  # misaligned: one line
    with pytest.raises(SystemExit):
        main(["analyze", "--model", str(model_dirs["teacher"])])
