"""The smoke run's building blocks (tlhelpers.tools.run_course --smoke): random weights under torchvision's
own file names, found offline by load_backbone; the backbones the notebooks use; the smoke environment.
The smoke run itself runs in scripts/test.sh (CI), after the tests."""
import json
import os

import pytest
import torch

from tlhelpers.tools import run_course
from tlhelpers.tools.backbones import BACKBONES, PretrainedWeightsUnavailable, load_backbone


@pytest.fixture
def hub(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    yield tmp_path / "torch"
    torch.hub.set_dir(old)


def test_random_weights_are_found_offline_under_torchvision_names(hub):
    with pytest.raises(PretrainedWeightsUnavailable, match="resnet18-f37072fd.pth"):
        load_backbone("resnet18", offline=True)  # an empty cache: the clear error, no download
    paths = run_course.random_torch_home(hub, ["resnet18", "efficientnet_lite0"])
    assert [p.relative_to(hub).as_posix() for p in paths] == ["hub/checkpoints/resnet18-f37072fd.pth"]
    model = load_backbone("resnet18", offline=True)  # what the notebooks call in full mode
    saved = torch.load(paths[0], weights_only=True)
    assert model.fc.out_features == 1000 and torch.equal(model.conv1.weight, saved["conv1.weight"])
    mtime = paths[0].stat().st_mtime_ns
    run_course.random_torch_home(hub, ["resnet18"])
    assert paths[0].stat().st_mtime_ns == mtime  # made once


def test_backbones_used_reads_the_code_cells(tmp_path):
    def notebook(name, code, markdown=""):
        cells = [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": markdown},
                 {"cell_type": "code", "id": "b", "metadata": {}, "source": code, "outputs": [], "execution_count": None}]
        path = tmp_path / name
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        return path

    paths = [notebook("01_a.ipynb", 'backbone = "efficientnet_lite0" if QUICK else "resnet50"', "try 'vgg16'"),
             notebook("02_b.ipynb", "load_backbone('resnet34')")]
    assert run_course.backbones_used(paths) == ["resnet34", "resnet50", "efficientnet_lite0"]
    assert set(run_course.backbones_used(sorted((run_course.config.REPO_ROOT / "notebooks").glob("*.ipynb")))) \
        >= {"resnet34", "resnet50"}


def test_the_smoke_environment_is_full_mode_capped_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(run_course, "random_torch_home", lambda home, names: [])
    monkeypatch.setattr(run_course.config, "PETS_DIR", None)
    monkeypatch.setattr(run_course.config, "CIFAR10_DIR", None)
    monkeypatch.setattr(run_course.config, "MAX_STEPS", None)
    monkeypatch.setattr(run_course.config, "MAX_BATCH_SIZE", None)
    env = run_course.smoke_environment(tmp_path, [])
    assert env["TLH_QUICK"] == "0" and env["TLH_OFFLINE"] == "1"
    assert env["TLH_MAX_STEPS"] == str(run_course.SMOKE_MAX_STEPS) == "2"
    assert env["TORCH_HOME"] == str(tmp_path / "torch") and env["TLH_DATA_DIR"] == str(tmp_path / "data")
    pets = tmp_path / "pets" / "oxford-iiit-pet"
    assert env["TLH_PETS_DIR"] == str(pets) and (pets / "annotations" / "list.txt").is_file()
    assert len(list((pets / "images").glob("*.jpg"))) == 222
    assert (run_course.Path(env["TLH_CIFAR10_DIR"]) / "train" / "cat").is_dir()
    monkeypatch.setattr(run_course.config, "PETS_DIR", "/somewhere/pets")
    assert run_course.smoke_environment(tmp_path, [])["TLH_PETS_DIR"] == "/somewhere/pets"


def test_expect_asserts_except_in_the_smoke_run(monkeypatch, capsys):
    from tlhelpers.tools import checks

    monkeypatch.setattr(checks.config, "SMOKE", False)
    checks.expect(True, "fine")
    with pytest.raises(AssertionError, match="pretrained should win"):
        checks.expect(False, "pretrained should win")
    monkeypatch.setattr(checks.config, "SMOKE", True)
    checks.expect(False, "pretrained should win")  # random weights: reported, not asserted
    assert "not checked] pretrained should win" in capsys.readouterr().out
