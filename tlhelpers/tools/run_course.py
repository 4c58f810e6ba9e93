"""Run the whole course headless: execute every notebook, keep the results in ``build/``.

    python -m tlhelpers.tools.run_course            # quick mode (sample data), every notebook
    python -m tlhelpers.tools.run_course --full     # full mode: real datasets (needs internet, a GPU helps)
    python -m tlhelpers.tools.run_course 04 07      # only the notebooks whose names start with these
    python -m tlhelpers.tools.run_course --smoke    # full mode, capped: checks that full mode RUNS, offline

The smoke run (``--smoke``) executes every notebook through its full-mode branches (torchvision
backbones by weights enum, 224 px, the same phases and code paths) with every epoch capped to
``TLH_MAX_STEPS`` batches of at most ``TLH_MAX_BATCH_SIZE`` images, without network: the
torchvision weights are RANDOMLY initialised, saved under torchvision's own file names in a
throwaway ``TORCH_HOME``; the data comes from ``TLH_PETS_DIR`` / ``TLH_CIFAR10_DIR`` when they are
set, otherwise from the course's samples in the real layouts. It checks that full mode runs, not
what it learns. Results go to ``build/smoke/``.

Writes ``build/notebooks/NN_name.ipynb`` (executed, with outputs), every figure as
``build/figures/NN_name/figNN.png``, and ``build/run_summary.json`` with the wall time and the
kernel's peak memory per notebook.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from tlhelpers import config


def _peak_rss_mb(pid: int | None) -> float | None:
    """Peak resident memory of a live process (Linux ``VmHWM``), in MB; None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, TypeError):
        pass
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time of a live process and its finished children (Linux ``/proc/<pid>/stat``), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    except (OSError, ValueError, TypeError, IndexError):
        return None


def _save_figures(nb, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("fig*.png"):
        old.unlink()
    count = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                count += 1
                (folder / f"fig{count:02d}.png").write_bytes(base64.b64decode(png))
    return count


def run_notebook(path: Path, out_dir: Path, timeout: int = 1800) -> dict:
    """Execute one notebook in its own folder; save it and its figures; return timing and memory."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    peak, cpu, error = None, None, None
    with client.setup_kernel():
        pid = getattr(getattr(client.km, "provisioner", None), "pid", None) or \
            getattr(getattr(getattr(client.km, "provisioner", None), "process", None), "pid", None)
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
        except Exception as exc:  # keep the partly executed notebook: it shows where it broke
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        peak, cpu = _peak_rss_mb(pid), _cpu_seconds(pid)
    seconds = time.perf_counter() - start
    out_nb = out_dir / "notebooks" / path.name
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_nb)
    figures = _save_figures(nb, out_dir / "figures" / path.stem)
    return {"notebook": path.name, "seconds": round(seconds, 1), "cpu_seconds": cpu and round(cpu, 1),
            "peak_rss_mb": peak and round(peak),
            "figures": figures, "error": error}


#: The smoke run's caps: batches per epoch and images per batch (small enough for a 2-core CPU).
SMOKE_MAX_STEPS = 2
SMOKE_MAX_BATCH_SIZE = 2
SMOKE_BANNER = (
    "SMOKE RUN: full mode, capped to {steps} batches of at most {batch} images per epoch, offline.\n"
    "The torchvision weights in {torch_home} are RANDOMLY initialised (saved under torchvision's own file\n"
    "names): this run checks that full mode RUNS, not what it learns. Accuracies below mean nothing.")


def backbones_used(notebooks) -> list[str]:
    """The ``BACKBONES`` names that the notebooks' code cells mention, in registry order."""
    import nbformat

    from tlhelpers.tools.backbones import BACKBONES

    code = "\n".join(cell.source for path in notebooks for cell in nbformat.read(path, as_version=4).cells
                     if cell.cell_type == "code")
    return [name for name in BACKBONES if re.search(rf"[\"']{re.escape(name)}[\"']", code)]


def random_torch_home(torch_home: Path, names) -> list[Path]:
    """Randomly initialised ImageNet-shaped weights for ``names``, under torchvision's file names in ``torch_home``.

    ``load_backbone`` then finds them where torchvision keeps downloaded weights
    (``$TORCH_HOME/hub/checkpoints/<file name of the weights enum's URL>``) and never goes online.
    The weights are random (their BatchNorm statistics measured on random images, so that
    activations stay in range): good for checking that code runs, useless for learning anything.
    """
    import torch

    from tlhelpers.tools.backbones import BACKBONES

    written = []
    for name in names:
        backbone = BACKBONES[name]
        if backbone.weights is None:  # its weights come from a package, not from torchvision
            continue
        path = torch_home / "hub" / "checkpoints" / os.path.basename(backbone.weights.url)
        if not path.exists():
            torch.manual_seed(0)
            model = backbone.builder(weights=None, num_classes=len(backbone.weights.meta["categories"]))
            # BatchNorm statistics of the random network on random images, so that it keeps its activations
            # in range in eval mode, as pretrained BatchNorm layers do (notebook 04's rule keeps them frozen)
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
                    module.momentum = None  # a plain average over the batches below
            model.train()
            with torch.no_grad():
                for _ in range(2):
                    model(torch.randn(8, 3, 224, 224))
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        written.append(path)
    return written


def smoke_environment(work: Path, notebooks) -> dict:
    """The environment of the smoke run: full mode, the caps, offline, random weights, data in the real layouts."""
    from tlhelpers.tools.samples import CIFAR10_SAMPLE, real_pets_sample

    env = {"TLH_QUICK": "0", "TLH_SMOKE": "1", "TLH_OFFLINE": "1", "TLH_NO_WIDGETS": "1",
           "TLH_MAX_STEPS": str(config.MAX_STEPS or SMOKE_MAX_STEPS),
           "TLH_MAX_BATCH_SIZE": str(config.MAX_BATCH_SIZE or SMOKE_MAX_BATCH_SIZE),
           "TORCH_HOME": str(work / "torch"), "TLH_DATA_DIR": str(work / "data"),
           # one PyTorch thread per kernel: batches of 2 gain nothing from a second one, and on a busy
           # machine two spinning threads per process made one capped epoch take minutes instead of seconds
           "OMP_NUM_THREADS": "1"}
    random_torch_home(work / "torch", backbones_used(notebooks))
    env["TLH_PETS_DIR"] = config.PETS_DIR or str(real_pets_sample(work / "pets"))  # images/ + annotations/
    env["TLH_CIFAR10_DIR"] = config.CIFAR10_DIR or str(CIFAR10_SAMPLE)            # <root>/train/<class>/*.jpg
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Execute the course notebooks headless into build/.")
    parser.add_argument("only", nargs="*", help="run only notebooks whose names start with these (e.g. 01 07)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="quick mode on the course's small real samples (default)")
    mode.add_argument("--full", action="store_true", help="full mode on the real datasets")
    mode.add_argument("--smoke", action="store_true",
                      help=f"full mode capped to {SMOKE_MAX_STEPS} batches of {SMOKE_MAX_BATCH_SIZE} images per epoch, "
                           "offline, with RANDOM weights: checks that full mode runs (results in build/smoke)")
    parser.add_argument("--out", type=Path, default=None, help="build folder (default: build/)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    if config.REPO_ROOT is None:
        parser.error("run this from a clone of the course repository (the notebooks/ folder was not found)")
    os.environ["TLH_QUICK"] = "0" if args.full or args.smoke else "1"
    # figures must come back as outputs (build/figures), whatever backend the shell asked for
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    out_dir = (args.out or config.build_dir() / ("smoke" if args.smoke else "")).resolve()
    notebooks = sorted((config.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in args.only)]
    if not notebooks:
        parser.error(f"no notebook matches {args.only}")

    mode_name = "smoke" if args.smoke else "full" if args.full else "quick"
    work = None
    if args.smoke:  # a throwaway folder for the random weights and the data the notebooks write
        work = tempfile.TemporaryDirectory(prefix="tlh-smoke-")
        env = smoke_environment(Path(work.name), notebooks)
        os.environ.update(env)  # the kernels inherit it
        print(SMOKE_BANNER.format(steps=env["TLH_MAX_STEPS"], batch=env["TLH_MAX_BATCH_SIZE"],
                                  torch_home=env["TORCH_HOME"]))
        print(f"Pets: {env['TLH_PETS_DIR']}\nCIFAR-10: {env['TLH_CIFAR10_DIR']}")
    print(f"Running {len(notebooks)} notebooks in {mode_name} mode; results go to {out_dir}")
    results, start = [], time.perf_counter()
    for path in notebooks:
        result = run_notebook(path, out_dir, timeout=args.timeout)
        results.append(result)
        status = "FAILED: " + result["error"] if result["error"] else "ok"
        print(f"  {path.name:45s}{result['seconds']:7.1f} s  cpu {result['cpu_seconds'] or '?':>6} s  "
              f"peak {result['peak_rss_mb'] or '?':>5} MB  "
              f"{result['figures']:2d} figures  {status}", flush=True)
    total = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    summary = {"mode": mode_name, "total_seconds": round(total, 1), "load_average_1min_at_end": load,
               "python": platform.python_version(),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "notebooks": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [r["notebook"] for r in results if r["error"]]
    if work is not None:
        work.cleanup()
        print("Smoke run: the weights were random; this checked that full mode runs, not what it learns.")
    cpu_total = sum(r["cpu_seconds"] or 0 for r in results)
    print(f"Total {total:.1f} s wall, {cpu_total:.0f} s CPU of the kernels (load average now {load}).")
    print(f"Executed notebooks: {out_dir / 'notebooks'}; figures: {out_dir / 'figures'}")
    if failed:
        print("FAILED: " + ", ".join(failed) + " (open the executed copies in build/notebooks to see where)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
