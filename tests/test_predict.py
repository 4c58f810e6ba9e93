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
