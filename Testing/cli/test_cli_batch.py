"""``learngn batch``: a failing pair does not stop the others, a second run resumes, shards split the cohort."""
from __future__ import annotations

import csv
import json
import os
import shutil

from cli_helpers import QUICK, learngn

QUICK_BATCH = [*QUICK, "--prealign", "none", "--iterations", "1"]


def _table(path):
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def test_batch_isolates_failures_and_resumes(images, tmp_path):
    shutil.copy(images["fixed"], tmp_path / "f.nii.gz")
    shutil.copy(images["moving"], tmp_path / "m.nii.gz")
    (tmp_path / "pairs.csv").write_text("id,fixed,moving\n"
                                        "first,f.nii.gz,m.nii.gz\n"
                                        "broken,f.nii.gz,later.nii.gz\n"
                                        f"third,{images['moving']},{images['fixed']}\n")
    outdir = tmp_path / "results"
    first = learngn("batch", tmp_path / "pairs.csv", "-o", outdir, *QUICK_BATCH)
    assert first.returncode == 1 and "1 of 3 pairs failed (broken)" in first.stderr, first.stderr
    assert (outdir / "first" / "summary.json").is_file() and (outdir / "third" / "summary.json").is_file()
    assert "later.nii.gz" in (outdir / "broken" / "error.txt").read_text()
    assert [r["status"] for r in _table(outdir / "batch_summary.csv").values()] == ["done", "failed", "done"]
    assert "| broken | failed" in first.stdout
    done_at = {pair: os.stat(outdir / pair / "summary.json").st_mtime_ns for pair in ("first", "third")}

    shutil.copy(images["moving"], tmp_path / "later.nii.gz")  # fix the broken pair, run the same command
    second = learngn("batch", tmp_path / "pairs.csv", "-o", outdir, *QUICK_BATCH)
    assert second.returncode == 0, second.stderr
    table = _table(outdir / "batch_summary.csv")
    assert {k: r["status"] for k, r in table.items()} == {"first": "skipped", "broken": "done", "third": "skipped"}
    assert all(float(r["ncc_after"]) > 0.8 for r in table.values())
    assert {pair: os.stat(outdir / pair / "summary.json").st_mtime_ns for pair in done_at} == done_at
    assert not (outdir / "broken" / "error.txt").exists()


def test_shards_split_the_cohort_round_robin(images, tmp_path):
    rows = "".join(f"{images['fixed']},{images['moving']}\n" for _ in range(3))
    (tmp_path / "pairs.csv").write_text("fixed,moving\n" + rows)  # no id column: pair0001, pair0002, ...
    run = learngn("batch", tmp_path / "pairs.csv", "-o", tmp_path / "out", "--shard", "2/2", *QUICK_BATCH)
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["batch_summary-shard2of2.csv", "pair0002"]


def test_shard_selection_covers_every_pair_once():
    from learngn.cli.cohort import Pair, select_shard
    from learngn.cli.pipeline import InputPaths

    pairs = [Pair(i + 2, f"p{i}", InputPaths("f", "m")) for i in range(7)]
    shards = [[p.id for p in select_shard(pairs, (i, 3))] for i in (1, 2, 3)]
    assert shards == [["p0", "p3", "p6"], ["p1", "p4"], ["p2", "p5"]]


def test_resume_reruns_a_pair_whose_settings_changed_and_skips_an_unchanged_one(images, tmp_path):
    (tmp_path / "pairs.csv").write_text(f"id,fixed,moving\nonly,{images['fixed']},{images['moving']}\n")
    outdir = tmp_path / "results"
    summary = outdir / "only" / "summary.json"
    assert learngn("batch", tmp_path / "pairs.csv", "-o", outdir, *QUICK_BATCH).returncode == 0
    assert json.loads(summary.read_text())["result_key"]["settings"]["iterations"] == 1

    changed = learngn("batch", tmp_path / "pairs.csv", "-o", outdir, *QUICK_BATCH, "--iterations", "2",
                      "--progress", "bar")  # notes shown
    assert changed.returncode == 0, changed.stderr
    assert _table(outdir / "batch_summary.csv")["only"]["status"] == "done"
    assert "iterations 1 -> 2" in changed.stdout + changed.stderr
    assert json.loads(summary.read_text())["settings"]["iterations"] == 2
    done_at = os.stat(summary).st_mtime_ns

    same = learngn("batch", tmp_path / "pairs.csv", "-o", outdir, *QUICK_BATCH, "--iterations", "2")
    assert same.returncode == 0, same.stderr
    assert _table(outdir / "batch_summary.csv")["only"]["status"] == "skipped"
    assert os.stat(summary).st_mtime_ns == done_at


def test_the_result_key_names_what_changed(tmp_path, monkeypatch):
    import torch

    import learngn.settings
    from learngn import models
    from learngn.cli.options import OutputOptions
    from learngn.cli.provenance import key_changes, result_key
    from learngn.predictors import GaussNewtonPredictors
    from learngn.settings import get_preset

    weights = tmp_path / "keyed.pt"
    torch.save(GaussNewtonPredictors().state_dict(), weights)
    (tmp_path / "keyed.json").write_text(json.dumps({"name": "keyed", "preset": "keyed-preset",
                                                      "sha256": models.sha256(weights)}), encoding="utf-8")
    monkeypatch.setenv(models.MODEL_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(learngn.settings, "PRESETS", dict(learngn.settings.PRESETS))
    preset = get_preset("keyed-preset")
    key = result_key(preset.name, preset.settings, {"fixed": "/a.nii.gz", "moving": "/b.nii.gz"}, OutputOptions())
    assert len(key["model_sha256"]) == 64 and key["engine_version"]
    assert key_changes(json.loads(json.dumps(key)), key) == []
    for entry, words in (("engine_version", "engine version"), ("model_sha256", "model checksum"),
                         ("preset", "preset"), ("inputs", "input files")):
        assert words in key_changes({**key, entry: "other"}, key)[0]
    assert "no record" in key_changes(None, key)[0]
