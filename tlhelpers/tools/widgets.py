"""Interactive touches that degrade to plain output under nbval, nbconvert and in a terminal (notebook 08).

- ``widgets_enabled``  True in a Jupyter kernel with ipywidgets (``TLH_NO_WIDGETS=1`` turns them off)
- ``slider``           a slider over ``render(i)`` figures, e.g. a batch of predictions
- ``dropdown``         the same with a drop-down list, e.g. to pick a backbone
- ``image_upload``     a file-upload button (``None`` where there is no live frontend)
- ``uploaded_image``   the uploaded file saved to disk, or ``None``: fall back to a path
- ``show``             display a figure now (also from a widget callback) and close it

How the fallback works: a widget's output is a bundle of formats. A live JupyterLab, Notebook,
VS Code or Colab draws the interactive widget; everything else (nbval, nbconvert, GitHub's
notebook viewer, a notebook reopened without its kernel) cannot, and shows the next format it
understands. ``slider`` and ``dropdown`` add a PNG of the default position to the bundle, so
those readers see the figure instead of ``IntSlider(value=0, ...)``. Outside Jupyter, or without
ipywidgets, the default position is simply drawn as a normal figure.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

from tlhelpers.tools.fileio import write_bytes_atomic

__all__ = ["widgets_enabled", "figure_png", "show", "slider", "dropdown", "interactive_figure",
           "image_upload", "uploaded_image"]


def widgets_enabled() -> bool:
    """True when widgets can work here: an IPython kernel with ipywidgets, and no ``TLH_NO_WIDGETS=1`` (notebook 08)."""
    from tlhelpers import config

    if config.NO_WIDGETS:
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _why_no_widgets() -> str:
    """Why ``widgets_enabled()`` is False here, in words for the reader."""
    from tlhelpers import config

    if config.NO_WIDGETS:
        return "widgets are turned off by TLH_NO_WIDGETS=1"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return "ipywidgets is not installed (pip install ipywidgets)"
    return "this is not a Jupyter kernel, so there is nothing to draw a widget"


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (notebook 08)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def show(fig) -> None:
    """Display ``fig`` now and close it, so it is drawn exactly once (notebook 08).

    In a notebook cell an open figure is drawn when the cell ends; inside a widget callback
    nothing is drawn unless we display it, hence this helper. In a terminal: ``plt.show()``.
    """
    import matplotlib.pyplot as plt

    if _in_ipython():
        from IPython.display import display

        display(fig)
    else:
        plt.show()  # a window (blocks until closed), or nothing with a non-interactive backend
    plt.close(fig)


class _WithStaticFallback:
    """Displays a widget; readers that cannot run widgets get ``png`` (and ``text``) instead."""

    def __init__(self, widget, png: bytes, text: str):
        self.widget, self.png, self.text = widget, png, text

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = dict(self.widget._repr_mimebundle_() or {})  # text/plain + application/vnd.jupyter.widget-view+json
        data["image/png"] = base64.b64encode(self.png).decode("ascii")
        data["text/plain"] = self.text
        return data


def interactive_figure(render, control, description: str = ""):
    """Show ``render(control.value)`` (a matplotlib Figure) and redraw it whenever ``control`` changes (notebook 08).

    ``control`` is any ipywidgets value widget (``IntSlider``, ``Dropdown``, ...). Returns the
    widget box, or ``None`` where widgets cannot run: then the figure of the current value is
    drawn as a normal figure. Figures are cached per value, so moving back is instant.
    """
    import matplotlib.pyplot as plt

    cache: dict = {}

    def png_for(value) -> bytes:
        if value not in cache:
            fig = render(value)
            cache[value] = figure_png(fig)
            plt.close(fig)
        return cache[value]

    if not widgets_enabled():
        fig = render(control.value if control is not None else None)
        show(fig)
        return None

    import ipywidgets
    from IPython.display import display

    image = ipywidgets.Image(value=png_for(control.value), format="png", layout=ipywidgets.Layout(max_width="100%"))

    def on_change(change):
        image.value = png_for(change["new"])

    control.observe(on_change, names="value")
    box = ipywidgets.VBox([control, image])
    text = f"{description or type(control).__name__}: {control.value!r} (move the control in a live Jupyter session)"
    display(_WithStaticFallback(box, cache[control.value], text))
    return box


def slider(render, n: int, start: int = 0, description: str = "image"):
    """A slider over ``render(0) .. render(n - 1)`` figures; a plain ``render(start)`` without widgets (notebook 08).

    The slider counts the way people do, 1 to ``n`` (position ``i + 1`` shows ``render(i)``), so
    it agrees with titles such as "image 1 of 16".
    """
    if n < 1:
        raise ValueError(f"slider: need n >= 1 positions, got {n}.")
    if not 0 <= start < n:
        raise ValueError(f"slider: start={start} is not one of 0..{n - 1}.")
    if not widgets_enabled():
        return interactive_figure(render, _Static(start), description)
    import ipywidgets

    control = ipywidgets.IntSlider(value=start + 1, min=1, max=n, step=1, description=description,
                                   continuous_update=False)
    return interactive_figure(lambda position: render(position - 1), control, description)


def dropdown(render, options, value=None, description: str = ""):
    """A drop-down list over ``render(option)`` figures; plain figure of ``value`` without widgets (notebook 08)."""
    options = list(options)
    value = options[0] if value is None else value
    if value not in options:
        raise ValueError(f"dropdown: value {value!r} is not one of {options}.")
    if not widgets_enabled():
        return interactive_figure(render, _Static(value), description)
    import ipywidgets

    return interactive_figure(render, ipywidgets.Dropdown(options=options, value=value, description=description),
                              description)


class _Static:
    """Stands in for a control where widgets cannot run: only a fixed ``value``."""

    def __init__(self, value):
        self.value = value


# --- your own image -----------------------------------------------------------------------------

def image_upload(on_image=None, description: str = "Upload image"):
    """A file-upload button for one image; ``None`` (and a hint) where widgets cannot run (notebook 08).

    ``on_image(path)`` (optional) runs right after each upload, with the file saved by
    ``uploaded_image``; a Figure it returns is shown below the button. Read the upload later
    with ``uploaded_image(upload)``.
    """
    if not widgets_enabled():
        print(f"(No upload button: {_why_no_widgets()}; set the image path in the next cell.)")
        return None
    import ipywidgets
    from IPython.display import display

    upload = ipywidgets.FileUpload(accept="image/*", multiple=False, description=description)
    output = ipywidgets.Output()

    def on_change(change):
        with output:
            output.clear_output(wait=True)
            try:
                path = uploaded_image(upload)
            except OSError as err:  # not an image the course can read: say why, keep the button alive
                print(err)
                return
            if path is None or on_image is None:
                return
            try:
                result = on_image(path)
            except Exception as err:  # noqa: BLE001 - show the reader what went wrong, keep the button alive
                print(f"Could not use {path.name}: {err}")
                return
            if result is not None and hasattr(result, "savefig"):
                show(result)

    upload.observe(on_change, names="value")
    display(ipywidgets.VBox([upload, output]))
    return upload


def _uploaded_files(upload) -> list[tuple[str, bytes]]:
    """``(name, content)`` pairs from a FileUpload: ipywidgets 8 (a tuple of dicts) or 7 (a dict by name)."""
    value = getattr(upload, "value", None) or ()
    if isinstance(value, dict):  # ipywidgets 7: {name: {"metadata": ..., "content": bytes}}
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


def uploaded_image(upload, folder=None) -> Path | None:
    """Save the last uploaded file to ``folder`` (default ``<data_dir>/uploads``) and return its path (notebook 08).

    ``None`` when ``upload`` is ``None`` (no widgets) or nothing was uploaded yet: use your
    default path then, ``uploaded_image(upload) or default_path``. The upload is first read with
    ``tlhelpers.tools.images.load_rgb``, the course's one image loader: a file it cannot use (not an
    image, too many pixels, odd pixel values) raises its ``ImageError`` naming the file, and
    nothing is saved.
    """
    if upload is None:
        return None
    files = _uploaded_files(upload)
    if not files:
        return None
    from tlhelpers import config

    from tlhelpers.tools.images import load_rgb

    name, content = files[-1]
    load_rgb(io.BytesIO(content), name=f"upload {name}")  # refuse what the course cannot read, before saving
    folder = Path(folder) if folder is not None else config.data_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (Path(name).name or "upload")  # keep only the file name: no "../" from a browser
    return write_bytes_atomic(path, content)
