"""What students see: every notebook run in JupyterLab, in a real (headless) Chromium.

nbval executes the notebooks but never opens a browser, so it cannot see a widget that fails to
draw ("Error displaying widget: model not found", the classic JupyterLab/ipywidgets version
mismatch), an output that JupyterLab cannot render, or a cell that never finishes. This module:

- starts JupyterLab on 127.0.0.1 with a random token, in quick mode (``TLH_QUICK=1``) with its
  own data folder, its own JupyterLab settings and workspaces, on copies of the notebooks (so
  nothing JupyterLab saves can reach the repository);
- opens each notebook of ``notebooks/`` in Chromium (driven by Selenium) and runs all cells;
- fails on any error output, any "Error displaying widget", any widget output that JupyterLab
  did not draw as a widget, and any cell left running or never run;
- drives one interaction per kind of widget: picks another backbone in notebook 04's dropdown,
  moves notebook 08's slider, gives notebook 08's upload button a real photo; each must redraw;
- saves screenshots of each notebook's end (and of each interaction) to ``build/screenshots/``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and PyPI's ``selenium`` (in requirements.txt); without them the tests are skipped with that hint.
``-k 08`` runs a single notebook. ``.ci/run`` installs Chromium and runs this with everything else.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
SCREENSHOTS = REPO / "build" / "screenshots"
WINDOW = (1280, 1000)  # a laptop-sized browser window; JupyterLab's layout as it opens by default
RUN_TIMEOUT_S = 1500   # one notebook in quick mode takes seconds to a minute or two on a quiet CPU
INSTALL_HINT = ("install Chromium and its driver (Debian/Ubuntu: `sudo apt-get install -y chromium "
                "chromium-driver`) and Selenium (`pip install selenium`, in requirements.txt)")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _find(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _find("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM),
                                reason=f"no real-browser check: {INSTALL_HINT}")


# --- JupyterLab and the browser --------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@contextlib.contextmanager
def _jupyterlab(home: Path, notebooks, disabled_extensions=()):
    """A JupyterLab server in quick mode with private settings, serving copies of ``notebooks``: (base URL, token)."""
    settings = home / "settings"
    # JupyterLab's defaults, except: every cell in the page (no windowing, so all outputs can be
    # checked), and no "news" or update pop-ups that would cover the notebook in screenshots.
    _write_json(settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings",
                {"windowingMode": "none"})
    _write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
                {"checkForUpdates": False, "fetchNews": "false"})
    _write_json(settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings", {"autosave": False})
    _write_json(home / "config" / "labconfig" / "page_config.json",
                {"disabledExtensions": {name: True for name in disabled_extensions}})
    # JupyterLab serves copies: nothing it saves (outputs, checkpoints) can reach the repository's notebooks
    root = home / "course"
    (root / "notebooks").mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy2(notebook, root / "notebooks" / Path(notebook).name)
    # a student's quick mode: none of the caller's course settings, and figures drawn inline
    env = {key: value for key, value in os.environ.items() if not key.startswith("TLH_") and key != "MPLBACKEND"}
    env.update(TLH_QUICK="1", TLH_DATA_DIR=str(home / "data"), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_CONFIG_DIR=str(home / "config"), PYTHONUNBUFFERED="1")
    port, token = _free_port(), secrets.token_hex(16)
    log = (home / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--allow-root"],  # root: CI containers
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {log.name}") from None
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with _jupyterlab(tmp_path_factory.mktemp("jupyterlab"), NOTEBOOKS) as server:
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(*WINDOW)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


# --- reading the notebook from the page --------------------------------------------------------

# The open notebook as JupyterLab's models hold it (window.jupyterapp: --LabApp.expose_app_in_browser).
STATE_JS = """
const panel = window.tlhPanel;
if (!panel || !panel.content || !panel.sessionContext) { return null; }
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.map((cell, index) => {
  const model = cell.model;
  const prompt = cell.node.querySelector('.jp-InputPrompt');
  const outputs = model.type === 'code' ? model.outputs.toJSON() : [];
  const rendered = Array.from(cell.node.querySelectorAll('.jp-OutputArea-output'))
                        .filter(node => !node.parentElement.closest('.jupyter-widgets'))  // not inside an Output widget
                        .map(node => node.querySelector('.jupyter-widgets') ? 'widget'
                                     : node.getAttribute('data-mime-type'));
  return {index, type: model.type, source: model.sharedModel.getSource(),
          executionCount: model.type === 'code' ? model.executionCount : null,
          prompt: prompt ? prompt.innerText : '', outputs, rendered,
          text: cell.node.innerText};
});
return {kernel: kernel ? kernel.status : 'none', dirty: panel.context.model.dirty, cells};
"""


# The notebook's panel (kept as window.tlhPanel), and the node of its first cell.
FIND_PANEL_JS = """
const app = window.jupyterapp;
if (!app) { return null; }
const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === arguments[0]);
if (!panel || !panel.sessionContext || !panel.content.widgets.length) { return null; }
window.tlhPanel = panel;
return panel.content.widgets[0].node;
"""
IS_CURRENT_JS = "return window.jupyterapp.shell.currentWidget === window.tlhPanel;"


def _state(driver):
    return driver.execute_script(STATE_JS)


def _wait(condition, timeout, what, poll=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(poll)


def _page_info(driver) -> str:
    return driver.execute_script(
        "const app = window.jupyterapp; const w = app && app.shell.currentWidget;"
        "return JSON.stringify({title: document.title, app: !!app, widget: w ? w.constructor.name : null,"
        " kernel: w && w.sessionContext ? w.sessionContext.kernelDisplayStatus : null,"
        " text: document.body.innerText.slice(0, 300)});")


def _running(state) -> list[int]:
    return [c["index"] for c in state["cells"] if c["type"] == "code" and "*" in c["prompt"]]


def _problems(state) -> list[str]:
    """Every error output, undrawn widget and cell left running or never run, in words."""
    problems = []
    for cell in state["cells"]:
        if cell["type"] != "code":
            continue
        where = f"cell {cell['index']} ({cell['source'].splitlines()[0][:60] if cell['source'] else ''!r})"
        for output in cell["outputs"]:
            if output.get("output_type") == "error":
                problems.append(f"{where}: {output.get('ename')}: {output.get('evalue')}")
        if "Error displaying widget" in cell["text"] or "model not found" in cell["text"]:
            problems.append(f"{where}: a widget did not display: {cell['text'][-300:]!r}")
        # An output JupyterLab could not draw as a widget is drawn from its fallback format (our
        # PNG, or "IntSlider(...)" text): a mime type other than the widget's. A widget closed on
        # purpose (a finished tqdm bar with leave=False) leaves an empty output: that is fine.
        for output, drawn in zip(cell["outputs"], cell["rendered"]):
            if WIDGET_MIME in (output.get("data") or {}) and drawn not in ("widget", None, WIDGET_MIME):
                problems.append(f"{where}: a widget was drawn as {drawn}, not as a widget: is the "
                                f"ipywidgets lab extension installed and matching ipywidgets?")
        if len(cell["outputs"]) != len(cell["rendered"]):
            problems.append(f"{where}: {len(cell['outputs'])} outputs, but {len(cell['rendered'])} on the page")
        if "*" in cell["prompt"]:
            problems.append(f"{where}: still running")
        elif cell["source"].strip() and cell["executionCount"] is None:
            problems.append(f"{where}: never ran")
    return problems


def _screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _scroll_to_cell(driver, index: int, block: str = "start") -> None:
    driver.execute_script(
        "const cell = window.tlhPanel.content.widgets[arguments[0]];"
        "cell.node.scrollIntoView({block: arguments[1]});", index, block)
    time.sleep(0.5)


def _scroll_to_output(driver, index: int) -> None:
    driver.execute_script(
        "const cell = window.tlhPanel.content.widgets[arguments[0]];"
        "(cell.node.querySelector('.jp-Cell-outputWrapper') || cell.node).scrollIntoView({block: 'start'});", index)
    time.sleep(0.5)


def _cell_index(state, text: str) -> int:
    for cell in state["cells"]:
        if cell["type"] == "code" and text in cell["source"]:
            return cell["index"]
    raise AssertionError(f"no code cell contains {text!r}: did the notebook change?")


def _open_and_run(driver, lab, notebook: Path) -> dict:
    from selenium.common.exceptions import WebDriverException

    base, token = lab
    url = f"{base}/lab/tree/notebooks/{notebook.name}?reset&token={token}"
    driver.get(url)
    _wait(lambda: driver.execute_script(FIND_PANEL_JS, f"notebooks/{notebook.name}"), 120,
          lambda: f"JupyterLab to open {notebook.name}; page: {_page_info(driver)}")
    _wait(lambda: (_state(driver) or {}).get("kernel") == "idle", 180,
          lambda: f"{notebook.name} to open with an idle kernel; page: {_page_info(driver)}")

    def focus():  # a click focuses the notebook: "Run All" acts on the current notebook
        try:
            driver.execute_script(FIND_PANEL_JS, f"notebooks/{notebook.name}").click()
        except WebDriverException:  # the page was redrawn under the click: try again
            return False
        return driver.execute_script(IS_CURRENT_JS)

    _wait(focus, 60, f"{notebook.name} to become the current notebook", poll=1)
    start = time.monotonic()
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    _wait(lambda: any(c["type"] == "code" and (c["executionCount"] is not None or "*" in c["prompt"])
                      for c in _state(driver)["cells"]), 60, "the first cell to start")

    def finished():
        state = _state(driver)
        return state if state["kernel"] == "idle" and not _running(state) else None

    # a second look a moment later: "idle" between two queued cells is not the end
    state = _wait(lambda: finished() and (time.sleep(2) or finished()), RUN_TIMEOUT_S, f"{notebook.name} to run")
    print(f"{notebook.name}: ran all cells in JupyterLab in {time.monotonic() - start:.0f} s")
    return state


# --- the tests ---------------------------------------------------------------------------------

def test_the_widget_lab_extension_matches_ipywidgets():
    """ipywidgets 8 needs the JupyterLab extension of jupyterlab_widgets 3, installed where JupyterLab looks."""
    from importlib.metadata import files, version

    from jupyter_core.paths import jupyter_path

    ipywidgets_major = int(version("ipywidgets").split(".")[0])
    widgets_ext = version("jupyterlab_widgets")
    assert ipywidgets_major == 8 and widgets_ext.startswith("3."), \
        f"ipywidgets {version('ipywidgets')} with jupyterlab_widgets {widgets_ext}: pip install -U ipywidgets"
    found = [Path(folder) / "@jupyter-widgets" / "jupyterlab-manager" / "package.json"
             for folder in jupyter_path("labextensions")]
    found = [path for path in found if path.is_file()]
    assert found, "JupyterLab does not see the ipywidgets extension: pip install --force-reinstall jupyterlab_widgets"
    loaded = json.loads(found[0].read_text())["version"]  # the first one found is the one JupyterLab loads
    shipped = [f for f in files("jupyterlab_widgets") or []
               if str(f).endswith("labextensions/@jupyter-widgets/jupyterlab-manager/package.json")]
    assert shipped, "jupyterlab_widgets lists no lab extension: pip install --force-reinstall jupyterlab_widgets"
    expected = json.loads(shipped[0].read_text())["version"]
    assert loaded == expected, (f"JupyterLab loads the ipywidgets extension {loaded} from {found[0]}, but "
                                f"jupyterlab_widgets {widgets_ext} ships {expected}: remove the stale copy")


def test_the_check_sees_a_widget_that_jupyterlab_cannot_draw(browser, tmp_path):
    """Without the ipywidgets lab extension (the classic break), a slider is drawn as its PNG fallback: caught."""
    import nbformat

    notebook = tmp_path / "slider.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nfrom tlhelpers.tools import widgets\n\n"
        "def render(i):\n    fig, ax = plt.subplots(figsize=(2, 2))\n    ax.set_title(f'figure {i}')\n    return fig\n\n"
        "widgets.slider(render, n=3);")], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                   "language": "python"}}), notebook)
    with _jupyterlab(tmp_path / "lab", [notebook], disabled_extensions=["@jupyter-widgets/jupyterlab-manager"]) as lab:
        try:
            problems = _problems(_open_and_run(browser, lab, notebook))
        finally:
            _close(browser)
    assert any("not as a widget" in problem for problem in problems), problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(browser, lab, notebook):
    state = None
    try:
        state = _open_and_run(browser, lab, notebook)
        problems = _problems(state)
        assert not problems, f"{notebook.name} in JupyterLab:\n" + "\n".join(problems)
        for view, text in VIEWS.get(notebook.stem[:2], {}).items():
            _scroll_to_output(browser, _cell_index(state, text))
            _screenshot(browser, f"{notebook.stem}-{view}")
        interact = INTERACTIONS.get(notebook.stem[:2])
        if interact:
            interact(browser, state, notebook.stem)
            problems = _problems(_state(browser))
            assert not problems, f"{notebook.name} after the widget interactions:\n" + "\n".join(problems)
    finally:
        if state is not None:
            with_output = [c["index"] for c in state["cells"] if c["outputs"]]
            if with_output:  # the last thing the notebook computed
                _scroll_to_output(browser, with_output[-1])
                _screenshot(browser, f"{notebook.stem}-last-output")
            _scroll_to_cell(browser, len(state["cells"]) - 1, "end")
        _screenshot(browser, f"{notebook.stem}-end")
        _close(browser)


def _close(driver) -> None:
    """Shut the kernel down and close the tab without saving."""
    driver.execute_script(
        "const panel = window.tlhPanel; window.tlhPanel = null;"
        "if (panel && panel.sessionContext) { panel.context.model.dirty = false;"
        "  panel.sessionContext.shutdown().then(() => panel.dispose()); }")
    time.sleep(1)


# Figures worth a screenshot of their own: {notebook number: {name: text of the cell that draws it}}.
VIEWS = {
    "06": {"histories": "plot_histories({name"},
    "08": {"confusion-37": "order=order,", "gradcam": "heatmaps = grad_cam(model, images)",
           "gradcam-two-questions": "pair_maps = grad_cam(", "predictor-error": "exit_code = predict.main("},
}


# --- one interaction per widget ----------------------------------------------------------------

def _widget_image_src(driver, cell_index: int) -> str:
    return driver.execute_script(
        "const cell = window.tlhPanel.content.widgets[arguments[0]];"
        "const img = cell.node.querySelector('.jupyter-widgets img, img.jupyter-widgets');"
        "return img ? img.src : '';", cell_index)


def _cell_element(driver, cell_index: int):
    return driver.execute_script(
        "return window.tlhPanel.content.widgets[arguments[0]].node;", cell_index)


def _choose_in_dropdown(driver, state, stem):
    """Notebook 04: another backbone in the dropdown redraws the parameter figure."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    index = _cell_index(state, "dropdown(plot_strategies")
    _scroll_to_cell(driver, index)
    before = _widget_image_src(driver, index)
    assert before, "notebook 04: the dropdown's figure is not on the page"
    select = Select(_cell_element(driver, index).find_element(By.CSS_SELECTOR, ".widget-dropdown select"))
    current = select.first_selected_option.text
    choice = next(o.text for o in select.options if o.text != current and "vgg" not in o.text)
    select.select_by_visible_text(choice)
    _wait(lambda: _widget_image_src(driver, index) not in ("", before), 120, f"the figure for {choice}")
    _screenshot(driver, f"{stem}-dropdown-{choice}")


def _move_slider(driver, state, stem):
    """Notebook 08: the slider shows another validation image, and its number matches the title."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    index = _cell_index(state, "widgets.slider(")
    _scroll_to_cell(driver, index)
    before = _widget_image_src(driver, index)
    cell = _cell_element(driver, index)
    readout = cell.find_element(By.CSS_SELECTOR, ".widget-readout")
    first = readout.text
    handle = cell.find_element(By.CSS_SELECTOR, ".noUi-handle")
    handle.click()
    for _ in range(3):
        handle.send_keys(Keys.ARROW_RIGHT)
    _wait(lambda: readout.text != first and _widget_image_src(driver, index) not in ("", before), 120,
          "the slider to show another image")
    _scroll_to_cell(driver, index)
    _screenshot(driver, f"{stem}-slider-{readout.text}")


def _upload_photo(driver, state, stem):
    """Notebook 08: a real pet photo given to the upload button gets its top-5 chart below it."""
    from selenium.webdriver.common.by import By

    photo = sorted((REPO / "tlhelpers" / "sample_data" / "pets").rglob("*.jpg"))[0]
    index = _cell_index(state, "widgets.image_upload(")
    _scroll_to_cell(driver, index)
    cell = _cell_element(driver, index)
    # The upload button opens a file dialog from an <input type=file> that is not in the page. For
    # the length of one click, such an input is put into the page instead, where Selenium can fill it.
    driver.execute_script("""
        const click = HTMLInputElement.prototype.click;
        HTMLInputElement.prototype.click = function () {
          if (this.type !== 'file') { return click.call(this); }
          HTMLInputElement.prototype.click = click;
          this.id = 'tlh-file-input'; this.style.display = 'block'; document.body.appendChild(this);
        };""")
    cell.find_element(By.CSS_SELECTOR, ".widget-upload").click()
    driver.find_element(By.ID, "tlh-file-input").send_keys(str(photo))
    _wait(lambda: driver.execute_script(
        "return arguments[0].querySelectorAll('.widget-output img, .jp-OutputArea-child img').length", cell) > 0,
        120, "the prediction figure for the uploaded photo")
    text = cell.text
    assert photo.name in text or "Could not use" not in text, f"upload of {photo.name} failed: {text[-300:]!r}"
    _scroll_to_cell(driver, index)
    _screenshot(driver, f"{stem}-upload")


def _notebook_08(driver, state, stem):
    _upload_photo(driver, state, stem)
    _move_slider(driver, state, stem)


INTERACTIONS = {"04": _choose_in_dropdown, "08": _notebook_08}
