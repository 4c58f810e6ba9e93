"""The command line ``python -m tlhelpers.tools.train_folder``: end to end, and every user error with exit code 2."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlhelpers.tools import train_folder
from tlhelpers.tools.export import load_exported
from tlhelpers.tools.predict import predict_images, run_in_fresh_process
from tlhelpers.tools.samples import make_image_folder_sample

torch.set_num_threads(1)  # 2 shared cores: tiny models are fastest on one thread

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--offline", "--frozen-epochs", "1", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
        "--num-workers", "0", "--no-progress"]


def run_cli(*args, timeout=300):
    """``python -m tlhelpers.tools.train_folder ARGS`` in a fresh process, one thread, this checkout on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tlhelpers.tools.train_folder", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder_sample(tmp_path_factory.mktemp("cli") / "photos", classes=["ant", "bee", "cat"],
                                    images_per_class=8, size=(40, 40))


@pytest.fixture()
def own_photos(photos, tmp_path):
    return Path(shutil.copytree(photos, tmp_path / "photos"))


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    """The command line run in this process, so its model can be compared with the exported file."""
    out = tmp_path_factory.mktemp("model") / "sub" / "model.pt"  # the folder is created
    run, path = train_folder.train([str(photos), *FAST, "--out", str(out)])
    return run, path


# --- end to end ----------------------------------------------------------------------------

def test_checkpoint_predicts_like_the_trained_model(trained):
    run, path = trained
    assert path.is_file() and not path.with_name(path.name + ".part").exists()
    model, meta = load_exported(path)
    assert meta["classes"] == ["ant", "bee", "cat"]
    assert (meta["image_size"], meta["backbone"]) == (32, "efficientnet_lite0")
    files = run.data.valid_ds.files
    exported = predict_images(model, meta, files, k=3)
    in_process = predict_images(run.model, meta, files, k=3)
    assert [p.label for p in exported] == [p.label for p in in_process]
    assert torch.allclose(torch.tensor([p.probs for p in exported]), torch.tensor([p.probs for p in in_process]),
                          atol=1e-5)
    # the metrics written into the file are those of the model in it
    targets = run.data.valid_ds.targets
    accuracy = sum(meta["classes"].index(p.label) == t for p, t in zip(exported, targets)) / len(targets)
    assert meta["metrics"]["val_acc"] == pytest.approx(accuracy)
    assert meta["training"]["frozen_epochs"] == meta["training"]["epochs"] == 1


def test_command_line_end_to_end(tmp_path):
    """A fresh process trains on a train/ + val/ folder; another fresh process predicts with the file."""
    data_dir = make_image_folder_sample(tmp_path / "split", classes=["ant", "bee", "cat"], images_per_class=8,
                                        size=(40, 40), split_dirs=True, val_pct=0.25)
    out = tmp_path / "model.pt"
    result = run_cli(data_dir, *FAST, "--out", out)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "train/ + val/, 3 classes, 18 training and 6 validation images" in text
    assert "frozen epoch 1/1" in text and "unfrozen epoch 1/1" in text
    for name in ("ant", "bee", "cat"):
        assert re.search(rf"^{name}\s+2\s+\d\s+\d+\.\d%$", text, re.M), text
    overall = float(re.search(r"^overall\s+6\s+\d\s+([\d.]+)%$", text, re.M).group(1))
    assert re.search(r"^time: [\d.]+ s training on cpu$", text, re.M)
    assert f"Wrote {out}" in text and out.is_file()

    # tlhelpers.tools.predict in a fresh process agrees with the exported model loaded here ...
    model, meta = load_exported(out)
    val_files = sorted((data_dir / "val").rglob("*.jpg"))
    predicted = run_in_fresh_process(out, val_files, "--json")
    assert predicted.returncode == 0, predicted.stderr
    here = predict_images(model, meta, val_files)
    there = json.loads(predicted.stdout)
    assert [p["top"][0][0] for p in there] == [p.label for p in here]
    assert torch.allclose(torch.tensor([p["probs"] for p in there]), torch.tensor([p.probs for p in here]),
                          atol=1e-5)
    # ... and with the accuracy the training process printed
    correct = sum(p.label == Path(p.path).parent.name for p in here)
    assert overall == pytest.approx(100 * correct / len(here), abs=0.05)


def test_unknown_backbone_lists_the_valid_ones(capsys, photos, tmp_path):
    with pytest.raises(SystemExit) as info:  # argparse's exit: usage, the message, code 2
        train_folder.main([str(photos), "--backbone", "resnet1000", "--out", str(tmp_path / "m.pt")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown backbone 'resnet1000'. Valid names: resnet18, resnet34" in err
    assert "mobilenet_v2" in err and "efficientnet_lite0" in err
    assert not (tmp_path / "m.pt").exists()


# --- user errors: exit code 2 and a message, no traceback ----------------------------------

def cli_error(capsys, *args):
    code = train_folder.main([*map(str, args)])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert captured.err.startswith("error: ")
    return captured.err


def test_missing_folder(capsys, tmp_path):
    err = cli_error(capsys, tmp_path / "no_such_folder", *FAST, "--out", tmp_path / "m.pt")
    assert "no_such_folder does not exist" in err


def test_one_class(capsys, own_photos, tmp_path):
    shutil.rmtree(own_photos / "bee")
    shutil.rmtree(own_photos / "cat")
    err = cli_error(capsys, own_photos, *FAST, "--out", tmp_path / "m.pt")
    assert "found 1 class folder (ant/)" in err and "at least two classes" in err


def test_empty_class(capsys, own_photos, tmp_path):
    (own_photos / "dog").mkdir()
    err = cli_error(capsys, own_photos, *FAST, "--out", tmp_path / "m.pt")
    assert "class folder(s) with no images: dog/" in err


def test_unreadable_images_fail_then_skip(capsys, own_photos, tmp_path):
    (own_photos / "bee" / "broken_1.jpg").write_bytes(b"GIF89a but not really")
    (own_photos / "cat" / "broken_2.png").write_bytes(b"")
    err = cli_error(capsys, own_photos, *FAST, "--out", tmp_path / "m.pt")
    assert "2 unreadable image(s)" in err and "broken_1.jpg" in err and "broken_2.png" in err
    assert "--bad-images skip" in err
    assert not (tmp_path / "m.pt").exists()

    code = train_folder.main([str(own_photos), *FAST, "--bad-images", "skip", "--out", str(tmp_path / "m.pt")])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 2 unreadable image(s)" in out and "broken_1.jpg" in out
    assert (tmp_path / "m.pt").is_file()


def test_out_must_be_a_file(capsys, photos, tmp_path):
    err = cli_error(capsys, photos, *FAST, "--out", tmp_path)
    assert "is a folder; give a file name" in err


def test_bad_arguments_exit_2(capsys, photos, tmp_path):
    for args in (["--val-pct", "1.5"], ["--epochs", "-1"], ["--bad-images", "ignore"], ["--balance", "x"]):
        with pytest.raises(SystemExit) as info:
            train_folder.main([str(photos), "--out", str(tmp_path / "m.pt"), *args])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "not between 0 and 1" in err and "-1 is negative" in err and "invalid choice: 'ignore'" in err
