"""The setup cells every notebook opens with, and the tool that keeps the notebooks in shape.

Every notebook's first two code cells are ``SETUP_CELLS``, verbatim and visible: on Colab the
first installs this package from the course repository; the second checks the versions of
``requirements.txt``, reads quick mode from ``tlhelpers.config``, seeds, picks the device and
sets the plot style, in plain code a student can read.

Command line (run after editing notebooks)::

    python -m tlhelpers.tools.notebook --sync    # clear outputs, stamp setup cell and Colab badge
    python -m tlhelpers.tools.notebook --check   # report notebooks that are not clean (exit 1)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


from tlhelpers import config

#: Minimum versions checked by the setup cell; ``tests/test_notebook.py`` keeps them equal
#: to ``requirements.txt``.
MIN_VERSIONS = {
    "torch": "2.2",
    "torchvision": "0.17",
    "numpy": "1.24",
    "pillow": "10.0",
    "matplotlib": "3.7",
    "seaborn": "0.13",
    "scikit-learn": "1.3",
    "pandas": "2.0",
    "tqdm": "4.66",
}

def _repo_slug(url: str = config.REPO_URL) -> str:
    return url.rstrip("/").removeprefix("https://github.com/")


INSTALL_MARKER = "# Setup 1/2"
SETUP_MARKER = "# Setup 2/2"
OLD_SETUP_MARKER = "# Setup: the same cell opens every notebook"  # the single setup cell of older notebooks


def install_cell(repo_url: str = config.REPO_URL) -> str:
    """The first code cell of every notebook: on Colab, install the course package."""
    return (
        f"{INSTALL_MARKER}: on Colab, install the course package (elsewhere, the README's set-up did).\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "tlhelpers @ git+{repo_url}"'
    )


def setup_cell(min_versions: dict | None = None) -> str:
    """The second code cell of every notebook: versions, quick mode, seed, device, plot style."""
    versions = ",\n".join(f'    "{name}": "{minimum}"' for name, minimum in (min_versions or MIN_VERSIONS).items())
    return (
        f"{SETUP_MARKER}: versions, quick mode, seed, device and plots, the same in every notebook.\n"
        "from importlib.metadata import version\n"
        "\n"
        "import matplotlib.pyplot as plt\n"
        "import torch\n"
        "from packaging.version import Version\n"
        "\n"
        "from tlhelpers import config\n"
        "\n"
        "MIN_VERSIONS = {  # the minimum versions of requirements.txt\n"
        f"{versions},\n"
        "}\n"
        "for package, minimum in MIN_VERSIONS.items():\n"
        "    assert Version(version(package).split(\"+\")[0]) >= Version(minimum), \\\n"
        "        f\"{package} {version(package)} is too old: pip install -U '{package}>={minimum}'\"\n"
        "\n"
        "QUICK = config.QUICK  # quick mode (TLH_QUICK=1): a small sample of real photos, few epochs, small images\n"
        "SEED = config.SEED    # we seed again right before every random step\n"
        "config.seed_everything(SEED)\n"
        "device = torch.device(\"cuda\" if torch.cuda.is_available() else \"cpu\")\n"
        "torch.set_flush_denormal(True)  # near-zero \"denormal\" floats make CPUs many times slower\n"
        "plt.rcParams.update({\"figure.dpi\": 100, \"savefig.dpi\": 300, \"axes.grid\": True, \"grid.alpha\": 0.3,\n"
        "                     \"axes.spines.top\": False, \"axes.spines.right\": False, \"font.size\": 11})\n"
        "print(f\"torch {torch.__version__} on {device}; data in {config.DATA_DIR}\")\n"
        "print(\"QUICK MODE: a small sample, few epochs, small images\" if QUICK else \"Full mode: the real data sets\")"
    )


INSTALL_CELL = install_cell()
SETUP_CELL = setup_cell()
SETUP_CELLS = (INSTALL_CELL, SETUP_CELL)


def colab_badge(notebook_name: str, repo_url: str = config.REPO_URL) -> str:
    """Markdown for the 'Open in Colab' badge of one notebook."""
    target = f"https://colab.research.google.com/github/{_repo_slug(repo_url)}/blob/main/notebooks/{notebook_name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"


# --- keeping notebooks clean -------------------------------------------------------------

NOTEBOOKS_DIR = (config.REPO_ROOT / "notebooks") if config.REPO_ROOT else Path("notebooks")
_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_problems(path: Path) -> list[str]:
    """What is wrong with one committed notebook (outputs, counts, setup cell, badge)."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{path}: not a readable notebook ({exc})"]
    problems = []
    cells = nb.get("cells", [])
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
            problems.append(f"{path.name}: cell {i} has outputs or an execution count")
    code = [_source(c) for c in cells if c.get("cell_type") == "code"]
    if tuple(code[:2]) != SETUP_CELLS:
        problems.append(f"{path.name}: the first two code cells are not tlhelpers.tools.notebook.SETUP_CELLS")
    header = _source(cells[0]) if cells and cells[0].get("cell_type") == "markdown" else ""
    if colab_badge(path.name) not in header:
        problems.append(f"{path.name}: the first markdown cell lacks the Open-in-Colab badge")
    return problems


def sync_notebook(path: Path) -> bool:
    """Clear outputs and stamp the setup cell and badge; return True if the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cells = nb.get("cells", [])
    for i, cell in enumerate(cells):
        if _source(cell).startswith(OLD_SETUP_MARKER):  # one old setup cell becomes the two new ones
            second = dict(cell, id=f"{cell.get('id', 'setup')}-2"[:64])
            cells[i:i + 1] = [cell, second]
            cell["source"], second["source"] = INSTALL_MARKER, SETUP_MARKER
            break
    for cell in cells:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            for marker, text in ((INSTALL_MARKER, INSTALL_CELL), (SETUP_MARKER, SETUP_CELL)):
                if _source(cell).startswith(marker):
                    cell["source"] = text.splitlines(keepends=True)
        cell.get("metadata", {}).pop("execution", None)
    if cells and cells[0].get("cell_type") == "markdown":
        header = _source(cells[0])
        badge = colab_badge(path.name)
        header = _BADGE_RE.sub(badge, header) if _BADGE_RE.search(header) else header.replace("\n", f"\n\n{badge}\n", 1)
        cells[0]["source"] = header.splitlines(keepends=True)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


README = (config.REPO_ROOT / "README.md") if config.REPO_ROOT else Path("README.md")


def readme_problems(readme: Path = README, notebooks=None) -> list[str]:
    """Notebooks the README does not list with their current Colab badge."""
    text = Path(readme).read_text(encoding="utf-8")
    paths = notebooks if notebooks is not None else sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [f"README.md: no Colab badge for {p.name}" for p in paths if colab_badge(p.name) not in text]


def sync_readme(readme: Path = README) -> bool:
    """Point every Colab badge in the README at the current ``REPO_URL``; True if it changed."""
    text = Path(readme).read_text(encoding="utf-8")
    new = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*/notebooks/([0-9][0-9]_[A-Za-z0-9_]+\.ipynb)\)",
                 lambda m: colab_badge(m.group(1)), text)
    if new != text:
        Path(readme).write_text(new, encoding="utf-8")
        return True
    return False


_RUNTIME_RE = re.compile(r"\*\*Runtime:\*\* quick mode on a 2-core CPU: [^.]*(\.[0-9]+[^.]*)?\.")


def stamp_runtime(path: Path, seconds: float, peak_mb: float | None = None) -> bool:
    """Write a measured quick-mode runtime into a notebook's ``**Runtime:**`` header line."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    header = _source(nb["cells"][0])
    memory = f", peak memory {peak_mb / 1024:.1f} GB" if peak_mb else ""
    text = f"**Runtime:** quick mode on a 2-core CPU: {seconds:.0f} s (x86_64, measured{memory})."
    new = _RUNTIME_RE.sub(text, header, count=1)
    if new == header:
        return False
    nb["cells"][0]["source"] = new.splitlines(keepends=True)
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sync", action="store_true", help="clear outputs; stamp setup cell and badge")
    parser.add_argument("--check", action="store_true", help="exit 1 if any notebook is not clean")
    parser.add_argument("--stamp-runtimes", type=Path, metavar="SUMMARY_JSON",
                        help="write measured quick-mode runtimes from build/run_summary.json into the headers")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if args.stamp_runtimes:
        summary = json.loads(args.stamp_runtimes.read_text())
        if summary.get("mode") != "quick":
            parser.error("--stamp-runtimes takes the summary of a quick-mode run")
        for row in summary["notebooks"]:
            if not row["error"] and stamp_runtime(NOTEBOOKS_DIR / row["notebook"], row["seconds"], row["peak_rss_mb"]):
                print(f"stamped {row['notebook']}: {row['seconds']} s")
    if args.sync:
        for p in paths:
            if sync_notebook(p):
                print(f"synced {p}")
        if not args.notebooks and README.exists() and sync_readme():
            print(f"synced {README}")
    problems = [msg for p in paths for msg in notebook_problems(p)]
    if not args.notebooks and README.exists():
        problems += readme_problems()
    print("\n".join(problems) if problems else f"{len(paths)} notebooks clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_main())
