"""How busy the machine was while a speed was timed (nmt_kd.cpuload) and what the report
says about it."""
import json

import pytest
from test_report import fake_run

from nmt_kd import cpuload
from nmt_kd.cpuload import OtherLoad, read_proc_stat


def test_proc_stat_is_parsed_and_absent_or_odd_files_give_none(tmp_path):
    f = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    f.write_text("cpu  100 5 50 800 20 3 2 10 40 0\ncpu0 50 2 25 400 10 1 1 5 20 0\n")
    assert read_proc_stat(f) == (100 + 5 + 50 + 3 + 2 + 10, 100 + 5 + 50 + 3 + 2 + 10 + 800 + 20)
    assert read_proc_stat(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert read_proc_stat(tmp_path / "odd") is None


def counters(values):
    it = iter(values)
    return lambda: next(it)


def test_other_processes_share_subtracts_this_process_own_time():
    # 100 ticks/s; over the block all CPUs advanced 400 ticks, 250 of them busy; this process
    # used 1.5 s = 150 ticks of them: the others used 100 of 400
    with OtherLoad(stat=counters([(1000, 5000), (1250, 5400)]), own=counters([2.0, 3.5]),
                   ticks_per_second=100) as load:
        pass
    assert load.share == pytest.approx(0.25)
    # an idle machine where this process did all the work: 0, and never below 0 when the
    # counters disagree by a tick
    with OtherLoad(stat=counters([(0, 0), (150, 400)]), own=counters([0.0, 1.51]),
                   ticks_per_second=100) as idle:
        pass
    assert idle.share == 0.0


def test_no_counters_or_no_time_means_not_measured():
    with OtherLoad(stat=counters([None, None]), own=counters([0.0, 1.0]), ticks_per_second=100) as a:
        pass
    assert a.share is None
    with OtherLoad(stat=counters([(5, 10), (5, 10)]), own=counters([0.0, 0.0]), ticks_per_second=100) as b:
        pass
    assert b.share is None


def test_on_this_machine_a_share_is_a_fraction_or_none():
    with OtherLoad() as load:
        sum(i * i for i in range(200_000))
    assert load.share is None or 0.0 <= load.share <= 1.0


def test_caveat_and_description():
    assert cpuload.caveat([0.01, 0.0]) is None
    assert cpuload.caveat([0.01, 0.40]) == "timed on a busy machine"
    assert cpuload.caveat([0.01, None]) == "machine load during timing not recorded"
    assert cpuload.caveat([0.40, None]) == "timed on a busy machine"
    assert "busy machine" in cpuload.describe([0.0, 0.5])
    assert "busy machine" not in cpuload.describe([0.0, 0.02])
    assert "not recorded" in cpuload.describe([None, None])
    assert "1 of 2 timed passes did not record it" in cpuload.describe([0.0, None])


@pytest.mark.parametrize("loads, busy, unrecorded", [
    ({"teacher": 0.01, "rnn_seq.seed1": 0.02, "rnn_seq.seed2": 0.0, "rnn_none.seed1": 0.0,
      "rnn_none.seed2": 0.03}, False, False),
    ({"teacher": 0.01, "rnn_seq.seed1": 0.45, "rnn_seq.seed2": 0.0, "rnn_none.seed1": 0.0,
      "rnn_none.seed2": 0.0}, True, False),
    ({"teacher": 0.01}, False, True),
])
def test_report_says_when_speeds_were_timed_on_a_busy_machine(tmp_path, loads, busy, unrecorded):
    from nmt_kd.report import build_report

    run = fake_run(tmp_path, loads=loads)
    build_report(run, title="toy", bootstrap=0, log=lambda _m: None)
    md = (run / "report/report.md").read_text()
    headline = json.loads((run / "report/metrics.json").read_text())["headline"]
    assert ("timed on a busy machine" in headline) == busy
    assert ("**timed on a busy machine**" in md) == busy
    assert ("machine load during timing not recorded" in headline) == unrecorded
    assert ("did not record it" in md) == unrecorded
    timing = json.loads((run / "report/metrics.json").read_text())["timing"]
    assert (timing["cpu_other_share_max"] == 0.45) == busy and (timing["passes_not_recorded"] > 0) == unrecorded
    html = (run / "report/report.html").read_text()
    assert ("timed on a busy machine" in html) == busy
