"""Tests for tlhelpers.tools.predict and the export round trip: in-process, in a fresh process, and every error case."""
import json
import re

import pytest
import torch
from PIL import Image

from tlhelpers.tools import predict
from tlhelpers.tools.export import EXPORT_KIND, export_model, load_exported, preprocess
from tlhelpers.tools.images import load_rgb
from tlhelpers.training import PretrainedClassifier

torch.set_num_threads(1)  # 2 shared cores

CLASSES = ["Bengal", "beagle", "boxer"]
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small exported PretrainedClassifier (random EfficientNet-Lite0 weights) and three image files."""
    folder = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = PretrainedClassifier("efficientnet_lite0", num_classes=len(CLASSES), pretrained=False).eval()
    with torch.no_grad():  # make the classes clearly different so top-k orders are stable
        model.network._fc.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    path = export_model(folder / "model.pt", model, CLASSES, IMAGE_SIZE)
    images = []
    pictures = [((200, 30, 30), (40, 30)), ((30, 200, 30), (30, 50)), ((30, 30, 200), (64, 64))]
    for i, (colour, size) in enumerate(pictures):
        image_path = folder / f"image_{i}.{'png' if i == 2 else 'jpg'}"
        Image.new("RGB", size, colour).save(image_path)
        images.append(image_path)
    return model, path, images


# --- export round trip -------------------------------------------------------------------------

def test_export_round_trip_gives_identical_logits(exported):
    model, path, images = exported
    reloaded, meta = load_exported(path)
    assert meta["kind"] == EXPORT_KIND and meta["classes"] == CLASSES and meta["image_size"] == IMAGE_SIZE
    assert "state_dict" not in meta and not reloaded.training and meta["backbone"] == "efficientnet_lite0"
    assert isinstance(reloaded, PretrainedClassifier) and reloaded.pretrained is False  # as exported
    batch = torch.stack([preprocess(meta)(load_rgb(p)) for p in images])
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))


def test_predict_images_matches_a_manual_forward_pass(exported):
    model, path, images = exported
    reloaded, meta = load_exported(path)
    predictions = predict.predict_images(reloaded, meta, images, k=2, batch_size=2)  # two batches
    assert [p.path for p in predictions] == [str(p) for p in images]
    batch = torch.stack([preprocess(meta)(load_rgb(p)) for p in images])
    with torch.no_grad():
        expected = reloaded(batch).softmax(dim=1)
    for pred, row in zip(predictions, expected):
        assert len(pred.top) == 2 and pred.top[0][1] >= pred.top[1][1]
        assert pred.probs == pytest.approx(row.tolist(), abs=1e-6)
        assert pred.label == CLASSES[int(row.argmax())] and pred.probability == pytest.approx(float(row.max()))
        assert sum(pred.probs) == pytest.approx(1.0, abs=1e-5)
    assert len(predict.predict_images(reloaded, meta, images[:1], k=10)[0].top) == len(CLASSES)  # k clipped


def test_predict_images_puts_every_layer_back_in_its_mode(exported):
    _, path, images = exported
    model, meta = load_exported(path)
    model.train()
    model.network._bn1.eval()  # a mode model.train() would not give back: restored layer by layer
    predict.predict_images(model, meta, images[:1])
    assert model.training and model.network._fc.training and not model.network._bn1.training


def test_cli_in_a_fresh_process_prints_top_k_and_predicts_identically(exported, tmp_path):
    _, path, images = exported
    json_path = tmp_path / "out" / "predictions.json"
    result = predict.run_in_fresh_process(path, images, "--top-k", "2", "--output", json_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(images) * 3  # per image: its path, then 2 ranked classes
    for i, image in enumerate(images):
        assert lines[3 * i] == str(image)
        for rank, line in enumerate(lines[3 * i + 1: 3 * i + 3], start=1):
            match = re.fullmatch(r"  (\d)\. (\S+)\s+(\d\.\d{4})", line)
            assert match and int(match[1]) == rank and match[2] in CLASSES
    fresh = json.loads(json_path.read_text())
    reloaded, meta = load_exported(path)
    here = predict.predict_images(reloaded, meta, images, k=2)
    for f, h in zip(fresh, here):
        assert f["path"] == h.path and [tuple(t) for t in f["top"]] == h.top
        assert f["probs"] == h.probs  # bit for bit: same file, same code, same CPU


def test_main_prints_json_with_every_probability(exported, capsys):
    _, path, images = exported
    assert predict.main([str(path), str(images[0]), "--json", "--top-k", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and len(out[0]["probs"]) == len(CLASSES) and len(out[0]["top"]) == 1


def test_format_predictions_aligns_names_and_probabilities():
    preds = [predict.Prediction("a.jpg", [("Bengal", 0.75), ("american_bulldog", 0.25)], [0.75, 0.25])]
    assert predict.format_predictions(preds).splitlines() == [
        "a.jpg",
        "  1. Bengal            0.7500",
        "  2. american_bulldog  0.2500",
    ]


# --- errors: exit code 2 and a message naming the file ---------------------------------------------

def run_main(capsys, *argv):
    code = predict.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_image(exported, capsys):
    _, path, images = exported
    code, out, err = run_main(capsys, path, images[0], "no_such_cat.jpg")
    assert code == 2 and out == ""
    assert "image not found" in err and "no_such_cat.jpg" in err


def test_folder_instead_of_image(exported, capsys, tmp_path):
    _, path, _ = exported
    code, _, err = run_main(capsys, path, tmp_path)
    assert code == 2 and str(tmp_path) in err and "folder" in err


def test_unreadable_image(exported, capsys, tmp_path):
    _, path, images = exported
    broken = tmp_path / "broken_cat.jpg"
    broken.write_bytes(b"this is not a JPEG")
    code, out, err = run_main(capsys, path, images[0], broken)
    assert code == 2 and out == ""
    assert "cannot read image" in err.lower() and str(broken) in err


def test_training_checkpoint_is_not_an_export(exported, capsys, tmp_path):
    model, _, images = exported
    training = tmp_path / "best.pt"
    torch.save(model.state_dict(), training)  # what fit_one_cycle(checkpoint=...) writes
    code, _, err = run_main(capsys, training, images[0])
    assert code == 2 and str(training) in err and "training checkpoint" in err and "bare state_dict" in err


@pytest.mark.parametrize("content, says", [("random bytes", "is not an exported model"),
                                           ("other dict", "is not an exported model"),
                                           ("incomplete export", "incomplete export"),
                                           ("wrong class count", "'classes' has 2 names but the model's head has 3")])
def test_other_files_are_not_exports(exported, capsys, tmp_path, content, says):
    model, path, images = exported
    bad = tmp_path / "model.pt"
    if content == "random bytes":
        bad.write_bytes(b"\x00\x01 certainly not a checkpoint" * 10)
    elif content == "other dict":
        torch.save({"epoch": 3, "state_dict": model.state_dict()}, bad)
    elif content == "incomplete export":  # no classes, no sizes
        torch.save({"kind": EXPORT_KIND, "backbone": "efficientnet_lite0", "state_dict": model.state_dict()}, bad)
    else:  # a 3-class head saved with 2 class names
        payload = torch.load(path, weights_only=True)
        torch.save({**payload, "classes": CLASSES[:2], "num_classes": 2}, bad)
    code, out, err = run_main(capsys, bad, images[0])
    assert code == 2 and out == "" and str(bad) in err
    assert says in err and err.count(str(bad)) == 1  # named once, not repeated by every layer


def test_export_needs_a_backbone_name(tmp_path):
    with pytest.raises(TypeError, match="backbone"):
        export_model(tmp_path / "linear.pt", torch.nn.Linear(2, 2), ["a", "b"], IMAGE_SIZE)
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_checkpoint_and_bad_options(exported, capsys, tmp_path):
    _, _, images = exported
    code, _, err = run_main(capsys, tmp_path / "nope.pt", images[0])
    assert code == 2 and "checkpoint not found" in err and "nope.pt" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: exit code 2 too
        predict.main([str(tmp_path / "nope.pt"), str(images[0]), "--top-k", "0"])
    assert exit_info.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err


def test_predict_images_raises_predict_error_naming_the_file(exported, tmp_path):
    _, path, _ = exported
    model, meta = load_exported(path)
    with pytest.raises(predict.PredictError, match="missing.png"):
        predict.predict_images(model, meta, [tmp_path / "missing.png"])
    with pytest.raises(FileNotFoundError, match="No exported model"):
        load_exported(tmp_path / "missing.pt")


# --- every metadata field is checked, before the model is built ----------------------------------

def tampered(path, tmp_path, **changes):
    """A copy of the export at ``path`` with some fields changed (as a damaged or hand-edited file would be)."""
    payload = torch.load(path, weights_only=True)
    bad = tmp_path / "tampered.pt"
    torch.save({**payload, **changes}, bad)
    return bad


@pytest.mark.parametrize("changes, field, says", [
    ({"classes": CLASSES + ["extra"], "num_classes": 4}, "classes", "4 names but the model's head has 3 outputs"),
    ({"num_classes": 10**12}, "num_classes", "the number of class names, 3"),
    ({"classes": ["a", "a", "b"]}, "classes", "'a' appear more than once"),
    ({"image_size": 0}, "image_size", "whole number of pixels from 8 to 2048"),
    ({"image_size": "64"}, "image_size", "is '64' (str)"),
    ({"image_size": 10**6}, "image_size", "from 8 to 2048"),
    ({"image_size": 64.0}, "image_size", "whole number"),
    ({"std": [0.0, 0.2, 0.2]}, "std", "above 0"),
    ({"std": [0.2, float("nan"), 0.2]}, "std", "3 finite numbers"),
    ({"mean": [0.5]}, "mean", "3 finite numbers"),
    ({"mean": "0.5 0.5 0.5"}, "mean", "3 finite numbers"),
    ({"backbone": "resnet1000"}, "backbone", "one of resnet18"),
])
def test_export_metadata_is_checked_field_by_field(exported, capsys, tmp_path, changes, field, says):
    model, path, images = exported
    bad = tampered(path, tmp_path, **changes)
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}: the field '{field}'") as info:
        load_exported(bad)
    assert says in str(info.value)
    code, out, err = run_main(capsys, bad, images[0])  # the command line: one line, exit 2, no traceback
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f"the field '{field}'" in err and str(bad) in err


def test_a_huge_class_list_is_refused_before_any_model_is_built(exported, tmp_path, monkeypatch):
    from tlhelpers.tools import export

    _, path, _ = exported
    names = [f"class_{i}" for i in range(200_000)]  # a head for these would take 1 GB
    bad = tampered(path, tmp_path, classes=names, num_classes=len(names))

    def no_model(*args, **kwargs):
        raise AssertionError(f"a model with {args[1]} classes was built for a file that does not fit")

    monkeypatch.setattr(export, "PretrainedClassifier", no_model)
    with pytest.raises(ValueError, match="'classes' has 200000 names but the model's head has 3 outputs"):
        load_exported(bad)


def test_non_finite_weights_are_never_exported(exported, tmp_path):
    model, path, _ = exported
    broken = PretrainedClassifier("efficientnet_lite0", num_classes=len(CLASSES), pretrained=False)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.network._fc.bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"weight 'network._fc.bias'.*NaN or infinite.*lower rate"):
        export_model(tmp_path / "nan.pt", broken, CLASSES, IMAGE_SIZE)
    with pytest.raises(ValueError, match="'image_size' is '32'"):
        export_model(tmp_path / "str.pt", model, CLASSES, "32")
    assert not list(tmp_path.iterdir())  # nothing written, not even a .part file
    bad = tampered(path, tmp_path, state_dict=broken.state_dict())  # an export from before this check
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_exported(bad)


# --- only regular files; names that are not UTF-8 ------------------------------------------------

def test_a_fifo_named_jpg_is_refused_instead_of_waiting_forever(exported, tmp_path):
    import os
    import subprocess

    _, path, images = exported
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(predict.PredictError, match=r"photo\.jpg is a FIFO \(named pipe\), not a regular file"):
        predict.check_image_paths([images[0], fifo])
    try:
        result = predict.run_in_fresh_process(path, [images[0], fifo], timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("predict waited on a FIFO")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert "photo.jpg is a FIFO" in result.stderr


def test_image_names_that_are_not_utf8_are_printed_escaped(exported, tmp_path, monkeypatch):
    import os
    import shutil

    _, path, images = exported
    latin1 = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jpg")  # "café.jpg" written by a Latin-1 system
    shutil.copy(images[0], latin1)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # a strict terminal: surrogates cannot be printed as such
    result = predict.run_in_fresh_process(path, [latin1], "--top-k", "1")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[0] == str(tmp_path / "caf\\udce9.jpg")  # Python's escape of that byte
