"""Provenance records: what the report says about where its numbers came from."""
import json

import pytest

from avb.report import provenance


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


STATUS = ("git", "status", "--porcelain", "--untracked-files=no", "--", ".", *provenance.DIRTY_IGNORED)


def test_commit_is_flagged_when_tracked_files_differ(monkeypatch):
    answers = {("git", "rev-parse", "HEAD"): "a" * 40,
               STATUS: " M avb/ais.py"}
    monkeypatch.setattr(provenance, "_run", lambda *cmd: answers[cmd])
    assert provenance.commit() == "a" * 40 + " (with uncommitted changes)"
    answers[STATUS] = ""
    assert provenance.commit() == "a" * 40


def test_rewritten_outputs_do_not_flag_the_commit(tmp_path, monkeypatch):
    """A render rewrites the tracked published run (results/cpu, paper/): that is not a code change."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    for name in ("avb/ais.py", "results/cpu/provenance.json", "paper/replication.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    (tmp_path / "results/cpu/provenance.json").write_text("v2\n")
    (tmp_path / "paper/replication.md").write_text("v2\n")
    assert "uncommitted" not in provenance.commit()
    (tmp_path / "avb/ais.py").write_text("v2\n")
    assert provenance.commit().endswith(" (with uncommitted changes)")


def test_git_runs_in_the_checkout_root():
    """The module lives in avb/report/: git must still run at the checkout root, or ``git status -- .`` sees only
    a subfolder and a change elsewhere goes unflagged."""
    from pathlib import Path
    assert provenance.ROOT == Path(__file__).resolve().parents[1]
