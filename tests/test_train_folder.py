"""tlhelpers.tools.train_folder: the recipe's settings, imbalance, metrics, and the command line end to end."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tlhelpers.finetune import FineTuneConfig, Phase, stage_param_groups
from tlhelpers.tools import train_folder
from tlhelpers.tools.export import load_exported
from tlhelpers.tools.image_folder import subset_samples
from tlhelpers.tools.predict import predict_images, run_in_fresh_process
from tlhelpers.tools.samples import make_image_folder_sample
from tlhelpers.tools.train_folder import (
    MIN_STEPS, FolderConfig, UsageError, WeightedLossClassifier, build_parser, class_weights, config_from_args,
    folder_config_from_args, folder_loaders, validation_metrics,
)
from tlhelpers.training import PretrainedClassifier

torch.set_num_threads(1)  # 2 shared cores: tiny models are fastest on one thread

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--offline", "--frozen-epochs", "1", "--epochs", "1", "--min-steps", "0", "--image-size", "32",
        "--batch-size", "8", "--num-workers", "0"]


def run_cli(*args, timeout=600, threads="1"):
    """``python -m tlhelpers.tools.train_folder ARGS`` in a fresh process, this checkout on the path."""
    env = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tlhelpers.tools.train_folder", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def parse(*args):
    return build_parser().parse_args(["photos", "--out", "m.pt", *map(str, args)])


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
    return train_folder.train([str(photos), *FAST, "--out", str(out)])


# --- the recipe's settings -----------------------------------------------------------------

def test_command_line_defaults_are_the_recipe_of_notebook_06():
    cfg, recipe = config_from_args(parse()), FineTuneConfig()
    assert cfg.phases == recipe.phases
    assert (cfg.opt_func, cfg.weight_decay, cfg.lr_ratio, cfg.grad_clip, cfg.amp) == \
        (recipe.opt_func, recipe.weight_decay, recipe.lr_ratio, recipe.grad_clip, recipe.amp)
    assert cfg.min_steps == MIN_STEPS > 0  # the one setting added for small folders
    model = PretrainedClassifier("efficientnet_lite0", 3, pretrained=False)
    for phase, ours in zip(recipe.phases, cfg.phases):  # the same optimizer parameter groups
        groups = [(g["name"], g["lr"]) for g in stage_param_groups(model, phase.max_lr, recipe.lr_ratio)]
        assert groups == [(g["name"], g["lr"]) for g in stage_param_groups(model, ours.max_lr, cfg.lr_ratio)]


def test_flags_map_onto_the_phases():
    cfg = config_from_args(parse("--frozen-epochs", 3, "--epochs", 5, "--lr", "2e-3", "--unfreeze-stages", 2,
                                 "--grad-clip", 0, "--weight-decay", 0.05, "--lr-ratio", 10, "--min-steps", 7))
    assert cfg.phases == [Phase(3, 2e-3, unfreeze=0), Phase(5, 1e-3, unfreeze=2)]  # fine-tuning at lr / 2
    assert (cfg.grad_clip, cfg.weight_decay, cfg.lr_ratio, cfg.min_steps) == (None, 0.05, 10, 7)
    assert config_from_args(parse("--epochs", 0)).phases == [FineTuneConfig().phases[0]]
    assert config_from_args(parse("--frozen-epochs", 0, "--finetune-lr", "1e-4")).phases == [Phase(4, 1e-4, None)]
    with pytest.raises(UsageError, match="nothing to train"):
        config_from_args(parse("--frozen-epochs", 0, "--epochs", 0))


def test_folder_settings_from_flags(tmp_path):
    args = build_parser().parse_args(["photos", "--out", str(tmp_path / "m.pt"), "--offline", "--balance", "none",
                                      "--image-size", "96", "--val-pct", "0.3"])
    folder_cfg = folder_config_from_args(args)
    assert folder_cfg == FolderConfig("efficientnet_lite0", 96, val_pct=0.3, out=tmp_path / "m.pt")
    args = build_parser().parse_args(["photos", "--out", str(tmp_path / "m.pt"), "--offline", "--backbone",
                                      "resnet34"])
    with pytest.raises(UsageError, match="--offline trains efficientnet_lite0"):
        folder_config_from_args(args)
    with pytest.raises(ValueError, match="balance='both'"):
        FolderConfig(balance="both").check()


# --- imbalance and metrics -----------------------------------------------------------------

def test_class_weights_are_balanced():
    assert torch.allclose(class_weights([0, 0, 0, 1], num_classes=2), torch.tensor([4 / 6, 2.0]))
    assert torch.allclose(class_weights([0, 1, 2, 0, 1, 2], 3), torch.ones(3))


def test_balanced_sampler_draws_classes_equally(tmp_path):
    from tlhelpers.tools.image_folder import folder_splits, scan_image_folder

    root = make_image_folder_sample(tmp_path / "photos", classes=["many", "few"], images_per_class=20, size=(16, 16))
    for path in sorted((root / "few").iterdir())[5:]:
        path.unlink()
    scan = scan_image_folder(root)
    train_ds, valid_ds = folder_splits(scan, size=8)
    train_dl, _ = folder_loaders(train_ds, valid_ds, FolderConfig(batch_size=4, num_workers=0, balance="sampler"))
    samples = subset_samples(train_ds)
    drawn = Counter(samples[i][1] for _ in range(40) for i in train_dl.sampler)
    assert 0.4 < drawn[1] / sum(drawn.values()) < 0.6  # 4 of 20 training images, drawn half the time
    first = list(folder_loaders(train_ds, valid_ds, FolderConfig(num_workers=0, balance="sampler"))[0].sampler)
    assert first == list(folder_loaders(train_ds, valid_ds, FolderConfig(num_workers=0, balance="sampler"))[0].sampler)


def test_weighted_loss_is_for_training_only():
    torch.manual_seed(0)
    plain = PretrainedClassifier("efficientnet_lite0", 2, pretrained=False).eval()
    weighted = WeightedLossClassifier("efficientnet_lite0", 2, [1.0, 5.0], pretrained=False).eval()
    weighted.load_state_dict(plain.state_dict())  # the weights are no part of the state: exports stay plain
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 0, 1]))
    assert not torch.isclose(weighted.training_step(batch), plain.training_step(batch))
    assert torch.isclose(weighted.validation_step(batch)["val_loss"], plain.validation_step(batch)["val_loss"])


def test_validation_metrics():
    metrics = validation_metrics(torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 2]), ["a", "b", "c"])
    assert metrics["val_acc"] == pytest.approx(5 / 6)
    assert metrics["balanced_acc"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert re.search(r"^\s+a\s+1\.00\s+0\.67\s+0\.80\s+3$", metrics["report"], re.M)
    probs = torch.eye(3)[[0, 0, 1, 1, 1, 2]]  # probabilities give the same result as labels
    assert validation_metrics(probs, torch.tensor([0, 0, 0, 1, 1, 2]), "abc")["val_acc"] == metrics["val_acc"]


# --- end to end ----------------------------------------------------------------------------

def test_checkpoint_predicts_like_the_trained_model(trained):
    run = trained
    assert run.path.is_file() and not run.path.with_name(run.path.name + ".part").exists()
    assert [h["phase"] for h in run.history] == [1, 2]
    model, meta = load_exported(run.path)
    assert meta["classes"] == ["ant", "bee", "cat"]
    assert (meta["image_size"], meta["backbone"]) == (32, "efficientnet_lite0")
    files = [path for path, _ in subset_samples(run.valid_ds)]
    exported = predict_images(model, meta, files, k=3)
    in_process = predict_images(run.model, meta, files, k=3)
    assert [p.label for p in exported] == [p.label for p in in_process]
    assert torch.allclose(torch.tensor([p.probs for p in exported]), torch.tensor([p.probs for p in in_process]),
                          atol=1e-5)
    # the metrics written into the file are those of the model in it
    targets = [target for _, target in subset_samples(run.valid_ds)]
    accuracy = sum(meta["classes"].index(p.label) == t for p, t in zip(exported, targets)) / len(targets)
    assert meta["metrics"]["val_acc"] == pytest.approx(accuracy)
    assert meta["training"]["phases"] == [{"epochs": 1, "max_lr": 1e-3, "unfreeze": 0},
                                          {"epochs": 1, "max_lr": 5e-4, "unfreeze": None}]
    assert meta["training"]["opt_func"] == "AdamW"


def test_command_line_end_to_end(tmp_path):
    """A fresh process trains on a train/ + val/ folder; another fresh process predicts with the file."""
    data_dir = make_image_folder_sample(tmp_path / "split", classes=["ant", "bee", "cat"], images_per_class=8,
                                        size=(40, 40), split_dirs=True, val_pct=0.25)
    out = tmp_path / "model.pt"
    result = run_cli(data_dir, *FAST, "--out", out)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "train/ + val/, 3 classes, 18 training and 6 validation images" in text
    assert "Phase 1: head only, 1 epoch," in text and "Phase 2: all stages, 1 epoch," in text
    for name in ("ant", "bee", "cat"):
        assert re.search(rf"^\s+{name}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+2$", text, re.M), text
    accuracy = float(re.search(r"^accuracy ([\d.]+)%, balanced accuracy [\d.]+%$", text, re.M).group(1))
    assert re.search(r"^time: [\d.]+ s training on cpu, [\d.]+ s in all$", text, re.M)
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
    assert accuracy == pytest.approx(100 * correct / len(here), abs=0.05)


@pytest.mark.slow
def test_default_command_line_learns_real_photos(tmp_path):
    """The defaults on 222 real Oxford-IIIT Pet photos (6 per breed): at least 70% validation accuracy."""
    sample = os.environ.get("TLH_PETS_SAMPLE_DIR")
    if not sample:
        pytest.skip("set TLH_PETS_SAMPLE_DIR to a folder of Oxford-IIIT Pet photos (e.g. /work/shared/data/pets-sample)")
    images = Path(sample) / "images" if (Path(sample) / "images").is_dir() else Path(sample)
    for photo in images.glob("*.jpg"):  # one folder per breed: <breed>_<n>.jpg -> <breed>/
        (tmp_path / "pets" / photo.stem.rpartition("_")[0]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "pets" / photo.stem.rpartition("_")[0] / photo.name).symlink_to(photo.resolve())
    result = run_cli(tmp_path / "pets", "--offline", "--image-size", "160", "--out", tmp_path / "m.pt",
                     timeout=1800, threads=str(os.cpu_count()))
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"^accuracy ([\d.]+)%", result.stdout, re.M).group(1))
    assert accuracy >= 70, result.stdout


def test_unknown_backbone_lists_the_valid_ones(capsys, photos, tmp_path):
    with pytest.raises(SystemExit) as info:  # argparse's exit: usage, the message, code 2
        train_folder.main([str(photos), "--backbone", "resnet1000", "--out", str(tmp_path / "m.pt")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'resnet1000'" in err and "resnet34" in err and "efficientnet_lite0" in err
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


def test_too_many_unfrozen_stages(capsys, photos, tmp_path):
    assert train_folder.main([str(photos), *FAST, "--unfreeze-stages", "99", "--out", str(tmp_path / "m.pt")]) == 2
    captured = capsys.readouterr()
    assert re.search(r"--unfreeze-stages\): efficientnet_lite0 has \d+ stages", captured.err)
    assert "Phase 1" not in captured.out  # found before any training


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
    for args in (["--val-pct", "1.5"], ["--epochs", "-1"], ["--bad-images", "ignore"], ["--balance", "x"],
                 ["--lr", "0"]):
        with pytest.raises(SystemExit) as info:
            train_folder.main([str(photos), "--out", str(tmp_path / "m.pt"), *args])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "1.5 is not between 0 and 1" in err and "-1 is not at least 0" in err
    assert "invalid choice: 'ignore'" in err and "0 is not above 0" in err


# --- issue: bad rates, missing devices, odd folder names, interrupted and diverged runs -------------

@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"),
                                         ("--lr", "-0.001"), ("--finetune-lr", "nan"), ("--weight-decay", "inf")])
def test_learning_rates_must_be_finite_and_positive(capsys, flag, value):
    with pytest.raises(SystemExit) as info:  # argparse: usage, a message naming the flag, exit 2
        parse(flag, value)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {value} is not" in err and ("finite" in err or "above 0" in err)
    with pytest.raises(SystemExit):
        parse("--lr", "inf")
    assert "argument --lr: inf is not a finite number" in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_a_usage_error(capsys, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    for device in ("cuda", "cuda:1"):
        err = cli_error(capsys, photos, *FAST, "--device", device, "--out", tmp_path / "m.pt")
        assert f"--device {device}: there is no CUDA GPU on this machine" in err and "Traceback" not in err
    err = cli_error(capsys, photos, *FAST, "--device", "gpu0", "--out", tmp_path / "m.pt")
    assert "--device gpu0: not a device name" in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_in_a_fresh_process(photos, tmp_path):
    result = run_cli(photos, *FAST, "--device", "cuda", "--out", tmp_path / "m.pt", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda: there is no CUDA GPU on this machine (or PyTorch was installed without CUDA "
        "support); leave --device out to use what is here."]


def test_a_class_folder_name_that_is_not_utf8_is_named(own_photos, tmp_path, monkeypatch):
    os.rename(own_photos / "cat", os.fsencode(own_photos) + b"/caf\xe9")  # "café" from a Latin-1 system
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # a strict terminal, as on many systems
    result = run_cli(own_photos, *FAST, "--out", tmp_path / "m.pt", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {own_photos}: the class folder 'caf\\xe9' has a name that is not UTF-8" in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_a_bug_is_not_reported_as_a_usage_error(photos, tmp_path, monkeypatch):
    def broken_fine_tune(*args, **kwargs):
        raise ValueError("an internal mistake")

    monkeypatch.setattr(train_folder, "fine_tune", broken_fine_tune)
    with pytest.raises(ValueError, match="an internal mistake"):  # a traceback, not "error: ..." and exit 2
        train_folder.main([str(photos), *FAST, "--out", str(tmp_path / "m.pt")])


def test_class_folders_differing_only_in_case_are_pointed_out(capsys, own_photos, tmp_path):
    shutil.copytree(own_photos / "cat", own_photos / "Cat")
    with pytest.warns(UserWarning, match="Cat/ and cat/"):
        assert train_folder.main([str(own_photos), *FAST, "--out", str(tmp_path / "m.pt")]) == 0
    assert "note: class folders Cat/ and cat/ differ only in upper/lower case" in capsys.readouterr().out


class InterruptedHistory(list):
    interrupted = True  # what fine_tune returns after Ctrl-C


def test_interrupted_training_keeps_out_and_writes_a_partial_file(capsys, photos, tmp_path, monkeypatch, trained):
    """Ctrl-C in phase 2 (made deterministic): exit 130, --out byte for byte as before, model.interrupted.pt."""
    real_fine_tune = train_folder.fine_tune

    def stopped_in_phase_2(model, train_dl, valid_dl, cfg, *args, **kwargs):
        first_phase_only = dataclasses.replace(cfg, phases=cfg.phases[:1])
        return InterruptedHistory(real_fine_tune(model, train_dl, valid_dl, first_phase_only, *args, **kwargs))

    monkeypatch.setattr(train_folder, "fine_tune", stopped_in_phase_2)
    out = tmp_path / "model.pt"
    shutil.copy(trained.path, out)  # a good model from an earlier run
    before = out.read_bytes()
    assert train_folder.main([str(photos), *FAST, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert out.read_bytes() == before
    partial = tmp_path / "model.interrupted.pt"
    assert "training interrupted (Ctrl-C) after phase 1: 1 of 1 epochs, phase 2: 0 of 1 epochs" in err
    assert f"{out} was left as it was" in err and str(partial) in err and "not the finished model" in err
    model, meta = load_exported(partial)
    assert meta["training"]["interrupted"] is True and meta["training"]["epochs_run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.interrupted.pt", "model.pt"]


def test_ctrl_c_in_a_fresh_process_exits_130_and_never_overwrites_out(photos, tmp_path, trained):
    """SIGINT sent to the command line once its first epoch has finished."""
    import signal
    import threading
    import time

    out = tmp_path / "model.pt"
    shutil.copy(trained.path, out)
    before = out.read_bytes()
    args = [*FAST, "--frozen-epochs", "500", "--epochs", "500"]  # far longer than the test waits
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tlhelpers.tools.train_folder", str(photos), *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Epoch ["):  # one epoch finished: training is under way
                time.sleep(0.5)  # into the next epoch (not between printing an epoch and recording it)
                proc.send_signal(signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=300)
    finally:
        watchdog.cancel()
    assert proc.returncode == 130, "".join(seen) + rest + err
    assert out.read_bytes() == before
    assert re.search(r"training interrupted \(Ctrl-C\) after phase 1: \d+ of 500 epochs, phase 2: 0 of 500 epochs",
                     err), err
    assert "model.interrupted.pt" in err and "Traceback" not in err
    assert load_exported(tmp_path / "model.interrupted.pt")[1]["training"]["interrupted"] is True


def test_a_diverging_run_stops_with_the_loops_message_and_writes_nothing(photos, tmp_path, trained):
    out = tmp_path / "model.pt"
    shutil.copy(trained.path, out)
    before = out.read_bytes()
    result = run_cli(photos, *FAST, "--lr", "1e30", "--out", out, timeout=300)  # finite, but far too high
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^error: training loss is (nan|inf) in epoch \d+, step \d+: .*Nothing was written\.$",
                     result.stderr, re.M), result.stderr
    assert "Traceback" not in result.stderr and out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
