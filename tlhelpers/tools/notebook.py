"""The setup cell every notebook opens with, and the tool that keeps the notebooks in shape.

Every notebook's first code cell is ``SETUP_CELL``, verbatim: on Colab it installs this
package from the course repository; everywhere it then calls :func:`setup_notebook`, which
checks versions against ``requirements.txt``, seeds, picks the device, sets the plot style
and prints a banner that says whether quick mode is on.

Command line (run after editing notebooks)::

    python -m tlhelpers.tools.notebook --sync    # clear outputs, stamp setup cell and Colab badge
    python -m tlhelpers.tools.notebook --check   # report notebooks that are not clean (exit 1)
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.version import Version

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

SETUP_MARKER = "# Setup: the same cell opens every notebook"


def _repo_slug(url: str = config.REPO_URL) -> str:
    return url.rstrip("/").removeprefix("https://github.com/")


def setup_cell(repo_url: str = config.REPO_URL) -> str:
    """The first code cell of every notebook (stamped by ``--sync``)."""
    return (
        f"{SETUP_MARKER} (master copy: tlhelpers/notebook.py).\n"
        "import sys\n"
        'if "google.colab" in sys.modules:  # a fresh Colab runtime: install the course package\n'
        f'    %pip install -q "tlhelpers @ git+{repo_url}"\n'
        "from tlhelpers.tools.notebook import setup_notebook\n"
        "QUICK, device = setup_notebook()"
    )


SETUP_CELL = setup_cell()


def colab_badge(notebook_name: str, repo_url: str = config.REPO_URL) -> str:
    """Markdown for the 'Open in Colab' badge of one notebook."""
    target = f"https://colab.research.google.com/github/{_repo_slug(repo_url)}/blob/main/notebooks/{notebook_name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"


def check_versions(min_versions: dict[str, str] = MIN_VERSIONS) -> dict[str, str]:
    """Return installed versions; raise a clear error for a missing or too-old package."""
    found, problems = {}, []
    for name, minimum in min_versions.items():
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (need >= {minimum})")
            continue
        if Version(found[name].split("+")[0]) < Version(minimum):
            problems.append(f"{name} {found[name]} is older than {minimum}")
    if problems:
        raise RuntimeError(
            "This course needs newer packages:\n  - " + "\n  - ".join(problems)
            + "\nInstall them with: pip install -r requirements.txt"
        )
    return found


def set_plot_style() -> None:
    """Plot defaults used by every figure of the course."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": 300,  # figures saved for slides or print
        "figure.figsize": (8, 4.5),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titleweight": "bold",
        "image.interpolation": "nearest",
    })


def setup_notebook(seed: int = config.SEED, verbose: bool = True):
    """Version checks, seed, device, plot style and a banner; returns ``(QUICK, device)`` (every notebook)."""
    if sys.version_info < (3, 9):
        raise RuntimeError(f"Python {platform.python_version()} is too old: the course needs Python >= 3.9.")
    versions = check_versions()
    quick = config.is_quick()
    config.seed_everything(seed)
    set_plot_style()
    from tlhelpers.device import get_default_device

    import torch

    # Tiny "denormal" floats (from weights and gradients near zero, common when training from
    # scratch) are up to 100x slower on x86 CPUs; flushing them to zero changes no result that
    # matters and made notebook 06's from-scratch run 20x faster on our CI CPU (129 s -> 6 s).
    torch.set_flush_denormal(True)
    device = get_default_device()
    if verbose:
        gpu = f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""
        print(f"Python {platform.python_version()}, torch {versions['torch']}, torchvision {versions['torchvision']}")
        print(f"device: {device}{gpu}   seed: {seed}   data: {config.data_dir()}")
        if quick:
            print("QUICK MODE (TLH_QUICK=1): small generated sample data, few epochs, small images.\n"
                  "Numbers below show the method working, not the real results; unset TLH_QUICK for the real run.")
        else:
            print("Full mode: real datasets, real sizes (set TLH_QUICK=1 for a fast run on sample data).")
    return quick, device


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
    code = [c for c in cells if c.get("cell_type") == "code"]
    if not code or _source(code[0]) != SETUP_CELL:
        problems.append(f"{path.name}: the first code cell is not tlhelpers.tools.notebook.SETUP_CELL")
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
    for cell in cells:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if _source(cell).startswith(SETUP_MARKER):
                cell["source"] = SETUP_CELL.splitlines(keepends=True)
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
