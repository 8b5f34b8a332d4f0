"""The README's results and the committed published run agree, and the old recollected "published" values are gone."""
from pathlib import Path

import pytest

from avb.report import readme

ROOT = Path(__file__).resolve().parent.parent
# Values an earlier recollection presented as the paper's Table 2 (ELBO / gap columns that appear nowhere in it)
OLD_RECOLLECTION = ("−100.8", "-100.8", "−89.4", "-89.4", "2.7 ± 0.5", "2.2 ± 0.2", "≈ 0.7 ± 0.5", "as reported (unverified)")


def test_readme_results_block_is_generated_from_the_committed_cpu_run(monkeypatch):
    if not (ROOT / "results" / "cpu" / "summary.csv").exists():
        pytest.skip("no committed cpu run")
    monkeypatch.chdir(ROOT)  # the block names the run as the README does: results/cpu
    block = readme.block("results/cpu")
    text = (ROOT / "README.md").read_text()
    assert f"{readme.BEGIN}\n{block}{readme.END}" in text, "README results block is stale: run `avb readme results/cpu`"


def test_update_rewrites_only_the_block(tmp_path):
    run = ROOT / "results" / "cpu"
    if not (run / "summary.csv").exists():
        pytest.skip("no committed cpu run")
    md = tmp_path / "README.md"
    md.write_text(f"intro\n{readme.BEGIN}\nstale\n{readme.END}\noutro\n")
    assert readme.update(md, run) is True
    text = md.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    assert readme.update(md, run) is False
    md.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- results:begin -->"):
        readme.update(md, run)


@pytest.mark.parametrize("path", ["README.md", "paper/replication.md", "results/cpu/table2.md",
                                  "results/cpu/summary.md", "avb/report/published.py", "avb/report/tables.py",
                                  "avb/report/paper.py"])
def test_no_recollected_value_is_presented_as_published(path):
    file = ROOT / path
    if not file.exists():
        pytest.skip(f"{path} not present")
    text = file.read_text()
    for old in OLD_RECOLLECTION:
        assert old not in text, f"{path} still shows {old!r}"
