"""Tests for tlhelpers.tools.widgets: interactive touches that degrade to plain output outside a live Jupyter."""
import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tlhelpers.tools import widgets  # noqa: E402


def figure_for(calls):
    def render(value):
        calls.append(value)
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.set_title(f"value {value}")
        return fig
    return render


def test_widgets_need_a_kernel_and_are_off_with_no_widgets(monkeypatch):
    import types

    import IPython

    from tlhelpers import config

    assert widgets.widgets_enabled() is False  # pytest runs no IPython kernel
    monkeypatch.setattr(config, "NO_WIDGETS", False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=object()))
    assert widgets.widgets_enabled() is True  # a kernel with ipywidgets ...
    monkeypatch.setattr(config, "NO_WIDGETS", True)
    assert widgets.widgets_enabled() is False  # ... unless TLH_NO_WIDGETS=1 turned them off


def test_slider_and_dropdown_draw_the_default_position_without_widgets():
    calls = []
    assert widgets.slider(figure_for(calls), n=5, start=2) is None
    assert calls == [2]
    assert widgets.dropdown(figure_for(calls), ["resnet34", "efficientnet_lite0"], value="efficientnet_lite0") is None
    assert calls == [2, "efficientnet_lite0"]
    assert plt.get_fignums() == []  # drawn once and closed
    with pytest.raises(ValueError, match="n >= 1"):
        widgets.slider(figure_for(calls), n=0)
    with pytest.raises(ValueError, match="not one of"):
        widgets.dropdown(figure_for(calls), ["a"], value="b")


def test_with_widgets_the_bundle_carries_a_static_png_and_the_slider_redraws(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(widgets, "widgets_enabled", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    calls = []
    box = widgets.slider(figure_for(calls), n=3, description="image")
    assert calls == [0] and len(shown) == 1
    bundle = shown[0]._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # live frontends draw the widget ...
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")  # ... the others this picture
    assert "image" in bundle["text/plain"]
    control, image = box.children
    assert (control.min, control.value, control.max) == (1, 1, 3)  # counts 1..n, like "image 1 of 3"
    first = image.value
    control.value = 3
    assert calls == [0, 2] and image.value != first  # position 3 is render(2)
    control.value = 1
    assert calls == [0, 2] and image.value == first  # cached: not drawn again


class FakeUpload:
    def __init__(self, value):
        self.value = value


def image_bytes(fmt: str, mode: str = "RGB", size=(8, 6), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def test_uploaded_image_saves_the_file_and_keeps_only_its_name(tmp_path):
    assert widgets.uploaded_image(None) is None
    assert widgets.uploaded_image(FakeUpload(()), folder=tmp_path) is None
    jpeg, png = image_bytes("JPEG"), image_bytes("PNG")
    v8 = FakeUpload(({"name": "../../my cat.jpg", "content": memoryview(jpeg), "type": "image/jpeg"},))
    path = widgets.uploaded_image(v8, folder=tmp_path)
    assert path == tmp_path / "my cat.jpg" and path.read_bytes() == jpeg
    v7 = FakeUpload({"dog.png": {"metadata": {}, "content": png}})
    assert widgets.uploaded_image(v7, folder=tmp_path).read_bytes() == png
    assert not list(tmp_path.glob("*.part"))


def test_upload_is_read_with_the_course_loader_before_it_is_saved(tmp_path, monkeypatch):
    """Not an image, or more pixels than the course's limit: an error naming the upload, nothing saved."""
    from tlhelpers.tools import images

    text = FakeUpload(({"name": "notes.jpg", "content": b"not a picture", "type": "image/jpeg"},))
    with pytest.raises(OSError, match="upload notes.jpg.*Delete or replace"):
        widgets.uploaded_image(text, folder=tmp_path)
    big = FakeUpload(({"name": "big.png", "content": image_bytes("PNG", size=(20, 10)), "type": "image/png"},))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(OSError, match=r"upload big.png.*20 x 10 = 200 pixels.*MAX_IMAGE_PIXELS"):
        widgets.uploaded_image(big, folder=tmp_path)
    assert not list(tmp_path.iterdir())
    sixteen = FakeUpload(({"name": "scan.png", "content": image_bytes("PNG", "I;16", colour=65535),
                           "type": "image/png"},))
    assert widgets.uploaded_image(sixteen, folder=tmp_path) == tmp_path / "scan.png"  # 16-bit: readable


def test_image_upload_without_widgets_says_what_to_do(capsys):
    assert widgets.image_upload() is None
    assert "set the image path" in capsys.readouterr().out


def test_without_widgets_the_upload_says_why(monkeypatch, capsys):
    from tlhelpers import config

    monkeypatch.setattr(config, "NO_WIDGETS", True)
    assert widgets.image_upload() is None
    assert "turned off by TLH_NO_WIDGETS=1" in capsys.readouterr().out
    monkeypatch.setattr(config, "NO_WIDGETS", False)
    assert widgets.image_upload() is None  # pytest is no Jupyter kernel
    out = capsys.readouterr().out
    assert "not a Jupyter kernel" in out and "TLH_NO_WIDGETS" not in out
