"""The notebooks are committed clean and open with the same two setup cells; the setup cell works."""
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
    assert any("SETUP_CELLS" in p for p in problems)
    assert any("badge" in p for p in problems)
    # --sync repairs outputs and the badge but cannot invent a missing setup cell
    assert notebook.sync_notebook(path)
    problems = notebook.notebook_problems(path)
    assert problems == ["01_x.ipynb: the first two code cells are not tlhelpers.tools.notebook.SETUP_CELLS"]


def test_sync_turns_an_old_single_setup_cell_into_the_two_setup_cells(tmp_path):
    old = "# Setup: the same cell opens every notebook (master copy: tlhelpers/notebook.py).\nQUICK = 1"
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# 01 · Title\n"},
                    {"cell_type": "code", "id": "abc", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": old}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps(nb))
    assert notebook.sync_notebook(path)
    assert notebook.notebook_problems(path) == []


def test_min_versions_match_requirements():
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", line.strip())
        if m:
            reqs[m.group(1).lower()] = m.group(2)
    for name, minimum in notebook.MIN_VERSIONS.items():
        assert reqs.get(name) == minimum, f"{name}: setup cell checks >= {minimum}, requirements.txt says {reqs.get(name)}"


def _run_setup_cell(min_versions=None) -> dict:
    namespace: dict = {}
    exec(notebook.setup_cell(min_versions), namespace)  # the cell has no IPython magics
    return namespace


def test_setup_cell_refuses_too_old_packages():
    with pytest.raises(AssertionError, match="torch .* is too old"):
        _run_setup_cell({"torch": "999"})


def test_setup_cell_passes_quick_mode_seed_and_device_on(monkeypatch, capsys):
    monkeypatch.setattr(config, "QUICK", True)
    namespace = _run_setup_cell()
    assert namespace["QUICK"] is True and namespace["SEED"] == config.SEED
    assert namespace["device"].type in {"cpu", "cuda"}
    assert "QUICK MODE" in capsys.readouterr().out
    monkeypatch.setattr(config, "QUICK", False)
    assert _run_setup_cell()["QUICK"] is False


def test_setup_cell_flushes_denormals():
    import torch
    torch.set_flush_denormal(False)
    _run_setup_cell()
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
