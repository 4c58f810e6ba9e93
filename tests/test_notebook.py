"""The notebooks are committed clean and share one setup cell; the setup helpers work."""
import json
import re
from pathlib import Path

import pytest

from tlhelpers import config
from tlhelpers.tools import notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    assert notebook.notebook_problems(path) == []


def test_problems_are_detected(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Title\n"},
                    {"cell_type": "code", "metadata": {}, "execution_count": 3,
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi"}],
                     "source": "print('hi')"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps(nb))
    problems = notebook.notebook_problems(path)
    assert any("outputs" in p for p in problems)
    assert any("SETUP_CELL" in p for p in problems)
    assert any("badge" in p for p in problems)
    # --sync repairs outputs and the badge but cannot invent a missing setup cell
    assert notebook.sync_notebook(path)
    problems = notebook.notebook_problems(path)
    assert problems == ["01_x.ipynb: the first code cell is not tlhelpers.tools.notebook.SETUP_CELL"]


def test_min_versions_match_requirements():
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", line.strip())
        if m:
            reqs[m.group(1).lower()] = m.group(2)
    for name, minimum in notebook.MIN_VERSIONS.items():
        assert reqs.get(name) == minimum, f"{name}: setup cell checks >= {minimum}, requirements.txt says {reqs.get(name)}"


def test_check_versions_reports_too_old():
    with pytest.raises(RuntimeError, match="torch .* is older than 999"):
        notebook.check_versions({"torch": "999"})
    with pytest.raises(RuntimeError, match="not installed"):
        notebook.check_versions({"no-such-package-tlh": "1.0"})


def test_setup_notebook_reads_quick_mode(monkeypatch, capsys):
    monkeypatch.setenv("TLH_QUICK", "1")
    quick, device = notebook.setup_notebook(seed=1)
    assert quick is True and device.type in {"cpu", "cuda", "mps"}
    assert "QUICK MODE" in capsys.readouterr().out
    monkeypatch.setenv("TLH_QUICK", "0")
    assert notebook.setup_notebook(verbose=False)[0] is False


def test_setup_notebook_flushes_denormals():
    import torch
    torch.set_flush_denormal(False)
    notebook.setup_notebook(verbose=False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32
    assert tiny.item() == 0.0
    torch.set_flush_denormal(False)


def test_bad_quick_value_is_an_error(monkeypatch):
    monkeypatch.setenv("TLH_QUICK", "maybe")
    with pytest.raises(ValueError, match="TLH_QUICK"):
        config.is_quick()


def test_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TLH_DATA_DIR", str(tmp_path))
    assert config.data_dir() == tmp_path.resolve()
    monkeypatch.delenv("TLH_DATA_DIR")
    assert config.data_dir() == ROOT / "data"


def test_seed_everything_repeats_random_draws():
    import torch
    config.seed_everything(7)
    a = torch.rand(3)
    config.seed_everything(7)
    assert torch.equal(a, torch.rand(3))


def test_readme_lists_every_notebook_with_its_badge():
    assert notebook.readme_problems() == []


def test_sync_readme_follows_repo_url(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("| [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                      "(https://colab.research.google.com/github/old/name/blob/main/notebooks/01_x.ipynb) |\n")
    assert notebook.sync_readme(readme)
    assert notebook.colab_badge("01_x.ipynb") in readme.read_text()
    assert not notebook.sync_readme(readme)


def test_stamp_runtime_rewrites_only_the_runtime_line(tmp_path):
    header = ("# 01 · Title\n\n**Runtime:** quick mode on a 2-core CPU: QUICK_RUNTIME_TBD. "
              "Full mode on a GPU: not measured yet.\n")
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": header}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert notebook.stamp_runtime(path, 21.4, 806)
    text = notebook._source(json.loads(path.read_text())["cells"][0])
    assert "quick mode on a 2-core CPU: 21 s (x86_64, measured, peak memory 0.8 GB)." in text
    assert text.endswith("Full mode on a GPU: not measured yet.\n") and "TBD" not in text
    assert notebook.stamp_runtime(path, 30, None)  # a second run replaces the first numbers
    assert "CPU: 30 s (x86_64, measured)." in notebook._source(json.loads(path.read_text())["cells"][0])
