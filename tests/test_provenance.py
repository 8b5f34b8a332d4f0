"""Provenance records: what the report says about where its numbers came from."""
import json

import pytest

from avb import provenance


def test_records_open_and_close_and_report_skips_paper_only_invocations(tmp_path):
    path = tmp_path / "out" / "provenance.json"      # the folder does not exist yet: the first job has not run
    run = provenance.started(path, ["snakemake", "--configfile", "config/cpu.yaml"], ["train", "train", "all"], 3)
    provenance.finished(path, run, "failed")
    paper = provenance.started(path, ["snakemake", "paper"], ["paper"], 1)
    provenance.finished(path, paper, "success")
    records = provenance.load(path)
    assert [r["status"] for r in records] == ["failed", "success"]
    assert records[0]["rules"] == ["all", "train"] and records[0]["jobs"] == 3 and records[0]["wall_s"] >= 0
    table = "\n".join(provenance.markdown(records))
    assert "config/cpu.yaml" in table and "| failed |" in table
    assert "snakemake paper" not in table                 # the render itself is not where numbers came from
    assert provenance.markdown([])[0].startswith("No provenance record")


def test_corrupt_record_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "provenance.json"
    path.write_text('[{"id": ')                            # e.g. a hand edit gone wrong
    with pytest.raises(ValueError, match="provenance.json"):
        provenance.load(path)
    path.write_text(json.dumps({"id": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        provenance.load(path)


def test_commit_is_flagged_when_tracked_files_differ(monkeypatch):
    answers = {("git", "rev-parse", "HEAD"): "a" * 40,
               ("git", "status", "--porcelain", "--untracked-files=no"): " M avb/ais.py"}
    monkeypatch.setattr(provenance, "_run", lambda *cmd: answers[cmd])
    assert provenance.commit() == "a" * 40 + " (with uncommitted changes)"
    answers[("git", "status", "--porcelain", "--untracked-files=no")] = ""
    assert provenance.commit() == "a" * 40
