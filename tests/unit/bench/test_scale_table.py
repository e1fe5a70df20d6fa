"""bench.scale's results: sizes measured by this run next to sizes kept from an earlier one (stages not
run are None), with each measured size's load average."""

import json

from bench import scale

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "ram_gib": 23.5}


def test_measured_and_kept_sizes_share_one_table_and_the_load_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "RESULTS", tmp_path)
    kept = {"events": 100, "users": 10, "items": 5, "stages": dict.fromkeys(scale.STAGES),
            "notes": {"all": "not run"}}
    (tmp_path / "scale.json").write_text(json.dumps({"sizes": [kept]}))
    measured = {"events": 10, "users": 1, "items": 2, "measured_at": "2026-12-04T18:00:00+00:00", "notes": {},
                "stages": {"extract": {"seconds": 1.5, "peak_mib": 300, "load_average_max": 2.6}}}
    result = {"generated_at": "2026-12-04T18:00:00+00:00", "machine": MACHINE, "note": "seconds are wall-clock",
              "sizes": [measured]}
    scale.save(result)
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert [s["events"] for s in saved["sizes"]] == [10, 100]
    table = (tmp_path / "scale.md").read_text()
    assert "| 10 | 1 | 2 | 1.5 (300) | — |" in table and "| 100 | 10 | 5 | — |" in table
    assert "- 10 events: measured from 2026-12-04T18:00:00+00:00; 1-minute load average up to 2.6" in table
    assert "- 100 events, all: not run" in table


def test_a_size_measured_again_until_prepare_keeps_its_later_stages():
    from bench.scale import keep_later_stages

    earlier = {"events": 10, "measured_at": "2026-12-04T18:54:25+00:00",
               "stages": {"extract": {"seconds": 11.4, "peak_mib": 1757}, "train_epoch": {"seconds": 608, "peak_mib": 8232},
                          "score": {"seconds": 296, "peak_mib": 3929}, "publish": {"seconds": 337, "peak_mib": 3929}},
               "notes": {"train_epoch": "capped", "score": "inside publish"}}
    fresh = {"events": 10, "measured_at": "2026-12-05T05:32:25+00:00", "stages": {}, "notes": {}}
    kept = keep_later_stages(fresh, [earlier])
    assert set(kept["stages"]) == {"train_epoch", "score", "publish"}  # the data stages are measured anew
    assert kept["notes"]["train_epoch"] == "capped" and "2026-12-04" in kept["notes"]["train_epoch, score, publish"]
    new_size = keep_later_stages({"events": 100, "stages": {}, "notes": {}}, [earlier])
    assert new_size["stages"] == {} and new_size["notes"] == {"train_epoch, score, publish": "not run (--until prepare)"}


def test_a_stage_in_its_own_process_reports_its_error_and_is_measured_alone():
    import pytest

    from bench.scale import PeakMemory, in_own_process

    with PeakMemory(interval=0.05) as memory, pytest.raises(RuntimeError, match="stage no_such_stage failed: Attr"):
        in_own_process(memory, "no_such_stage")
    assert memory.child_only and memory.root not in (None, __import__("os").getpid())


def test_publishing_again_needs_what_an_earlier_run_left(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setattr(scale, "RESULTS", tmp_path)
    (tmp_path / "scale.json").write_text(json.dumps({"sizes": [
        {"factor": 7, "events": 7, "users": 1, "items": 1, "stages": {"extract": {"seconds": 1.0}}, "notes": {}}]}))
    with pytest.raises(SystemExit, match="--from publish needs what an earlier run of 7x left.*--keep-database"):
        scale.main(["--sizes", "7", "--from", "publish", "--database", "prismrec_scale_absent",
                    "--home", str(tmp_path / "home")])
    assert json.loads((tmp_path / "scale.json").read_text())["sizes"][0]["stages"] == {"extract": {"seconds": 1.0}}


def test_a_results_name_that_is_not_a_plain_file_name_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        scale.main(["--results", "../elsewhere"])
    assert "a file name in bench/results" in capsys.readouterr().err
