"""One entry point for the speed and memory benchmarks: the course's fast paths against the original write-up's.

    python benchmarks/run.py                      # CPU, small step counts (a few minutes)
    python benchmarks/run.py --device cuda        # the same on a GPU, more steps, the full-size Pets set
    python benchmarks/run.py --only pets --json build/bench.json

Each pipeline runs for a fixed number of batches in its own subprocess (so each has its own
peak memory) and the results come back as one table; ``--json`` also writes them to a file.

- **load img/s**: images per second that the loader delivers on the device, nothing else
  (median of ``--repeats`` runs of ``--steps`` batches, after 2 warm-up batches);
- **train img/s**: images per second of whole training steps, loading included
  (``--train-steps`` steps after one warm-up step);
- **x base**: that number divided by the baseline's, both measured in this run;
- **peak host MB**: the largest sampled sum of the proportional set size (PSS) of the
  pipeline's process and its DataLoader workers. PSS splits pages shared between processes
  (forked workers share most of their memory with the parent), so the sum counts them once,
  where a sum of RSS would count them once per process. Sampled every 50 ms from ``/proc``;
  elsewhere, the peak RSS of the main process (``resource``);
- **peak GPU MB**: ``torch.cuda.max_memory_allocated`` (CUDA only): model, activations,
  optimizer state, and for the cached path the uint8 images themselves.

Pets rows: a generated Oxford-IIIT Pet look-alike with ~500x375 JPEGs
(``tlhelpers.tools.samples.make_pets_sample``, in ``data_dir()/bench/``), so decoding costs what it
costs on the real photos. CIFAR-10 rows come from ``benchmarks/bench_cifar.py`` (ResNet50 at
224: PIL ``Resize(224)`` per image against notebook 07's GPU-resident path; training only), run
in a subprocess with this run's device and step count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

#: What every table row holds (None where a value does not apply or was not measured).
ROW_KEYS = ("dataset", "pipeline", "baseline", "device", "batch_size", "load_img_s", "load_ratio",
            "train_img_s", "train_ratio", "peak_host_mb", "peak_gpu_mb", "notes")

#: Defaults per device: a 2-core CPU trains ResNet34 at 224 at a few images per second.
DEFAULTS = {
    "cpu": {"steps": 40, "train_steps": 2, "batch_size": 16, "pets_images": 1850, "repeats": 3},
    "cuda": {"steps": 50, "train_steps": 30, "batch_size": 128, "pets_images": 7400, "repeats": 3},
}
PETS_IMAGE_SIZE = (500, 375)  # (width, height) of the generated JPEGs, varied +-20% per picture
PETS_CACHE_SIZE, PETS_CROP = 256, 224
WARMUP_BATCHES = 2
SEED = 42


# --- measuring memory ------------------------------------------------------------------------

def _pss_kb(pid: int) -> int:
    """Proportional set size of one process in kB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                children = []
            found.extend(children)
            todo.extend(children)
    return found


class PeakHostMemory:
    """Peak host memory (MB) of a process (default: this one) and its children, sampled in a background thread."""

    def __init__(self, interval: float = 0.05, pid: int | None = None):
        self.interval = interval
        self.pid = pid or os.getpid()
        self.peak_kb = 0
        self.method = "pss" if os.path.exists(f"/proc/{self.pid}/smaps_rollup") else "ru_maxrss"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        if self.method == "pss":
            total = sum(_pss_kb(p) for p in [self.pid, *_descendants(self.pid)])
        else:  # kB on Linux, bytes on macOS; only for this process
            total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            total = total // 1024 if sys.platform == "darwin" else total
        self.peak_kb = max(self.peak_kb, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


# --- the Pets data set -------------------------------------------------------------------------

def ensure_bench_pets(n_images: int) -> tuple[Path, int, float | None]:
    """The generated Pets set with about ``n_images`` images: (folder, image count, seconds it took or None)."""
    from tlhelpers import config
    from tlhelpers.tools.samples import MARKER, PET_BREEDS, make_pets_sample

    per_breed = max(2, min(200, round(n_images / len(PET_BREEDS))))  # the real set has <= 200 per breed
    root = config.data_dir() / "bench" / f"pets-{PETS_IMAGE_SIZE[0]}x{PETS_IMAGE_SIZE[1]}-{per_breed}"
    existed = (root / "oxford-iiit-pet" / MARKER).exists()
    if not existed:
        print(f"Generating {per_breed * len(PET_BREEDS):,} Pets JPEGs of about {PETS_IMAGE_SIZE[0]}x"
              f"{PETS_IMAGE_SIZE[1]} in {root} (once; about 0.1 s per image on a 2-core CPU) ...", flush=True)
    start = time.perf_counter()
    pets_dir = make_pets_sample(root, images_per_breed=per_breed, image_size=PETS_IMAGE_SIZE)
    seconds = None if existed else time.perf_counter() - start
    return pets_dir, per_breed * len(PET_BREEDS), seconds


# --- one pipeline, in a subprocess ------------------------------------------------------------

def _forever(loader):
    """Batches from ``loader``, epoch after epoch: a fixed number of steps never runs out."""
    while True:
        yield from loader


class _Take:
    """The next ``n`` batches of an iterator, as a loader with a length."""

    def __init__(self, batches, n: int):
        self.batches, self.n = batches, n

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.batches)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pets_pipeline(pipeline: str, args) -> dict:
    """Measure one Pets pipeline ("original" or "cached") in this process; returns a row dict."""
    import torch

    import pets_baseline as base
    from bench_cifar import train_steps
    from tlhelpers.tools.cache import cached_pets_loaders, images_per_second

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakHostMemory() as memory:
        if pipeline == "original":
            train_dl = base.original_train_loader(args.pets_dir, device, base.IMG_SIZE, args.batch_size, seed=SEED)
        else:
            train_dl, _, _ = cached_pets_loaders(args.pets_dir, PETS_CACHE_SIZE, PETS_CROP, args.batch_size,
                                                 seed=SEED, device=device, progress=False)
        load_runs = [images_per_second(train_dl, args.steps, WARMUP_BATCHES, device=device)
                     for _ in range(args.repeats)]

        train_img_s = None
        if args.train_steps > 0:
            torch.manual_seed(SEED)
            model = base.original_model().to(device)
            optimizer = base.original_optimizer(model)
            batches = _forever(train_dl)
            if pipeline == "original":  # the write-up's loop: float32, NCHW, .to(device) per batch
                def train(n):
                    base.original_train_steps(model, _Take(batches, n), optimizer)
            else:  # the course's way: bf16 autocast and channels_last on CUDA
                if device.type == "cuda":
                    model.to(memory_format=torch.channels_last)

                def train(n):
                    train_steps(model, _Take(batches, n), optimizer, device, amp=device.type == "cuda", grad_clip=0.1)
            train(1)  # warm-up: first-call allocations, cuDNN algorithm choice, worker start
            _sync(device)
            start = time.perf_counter()
            train(args.train_steps)
            _sync(device)
            train_img_s = args.train_steps * args.batch_size / (time.perf_counter() - start)
    return {
        "dataset": f"Pets {args.pets_images:,} JPEGs ~{PETS_IMAGE_SIZE[0]}x{PETS_IMAGE_SIZE[1]}, 224 px",
        "pipeline": ("original: PIL decode+Resize+RandomCrop per image, fp32" if pipeline == "original"
                     else f"uint8 cache {PETS_CACHE_SIZE}px + GPUBatchLoader, amp/channels_last on CUDA"),
        "baseline": pipeline == "original", "device": str(device), "batch_size": args.batch_size,
        "load_img_s": statistics.median(load_runs), "load_runs": load_runs,
        "train_img_s": train_img_s,
        "peak_host_mb": memory.peak_mb, "host_memory_method": memory.method,
        "ru_maxrss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "notes": None,
    }


def _run_in_subprocess(pipeline: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device,
               "--steps", str(args.steps), "--train-steps", str(args.train_steps),
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
               "--pets-images", str(args.pets_images),
               "--worker", pipeline, "--worker-pets-dir", str(args.pets_dir), "--worker-out", str(out)]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


# --- the table -------------------------------------------------------------------------------

def add_ratios(rows: list) -> None:
    """Fill ``load_ratio``/``train_ratio``: each row against the baseline row of its data set."""
    baselines = {row["dataset"]: row for row in rows if row.get("baseline")}
    for row in rows:
        base = baselines.get(row["dataset"])
        for key in ("load", "train"):
            value, ref = row.get(f"{key}_img_s"), base and base.get(f"{key}_img_s")
            row[f"{key}_ratio"] = value / ref if value and ref else None


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: list) -> str:
    """The rows as a Markdown table (paste it into benchmarks/README.md as is)."""
    lines = ["| data | pipeline | device | batch | load img/s | x base | train img/s | x base "
             "| peak host MB | peak GPU MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['pipeline']}{' (baseline)' if r.get('baseline') else ''} | {r['device']} "
            f"| {_fmt(r.get('batch_size'), 'd')} | {_fmt(r.get('load_img_s'), ',.0f')} "
            f"| {_fmt(r.get('load_ratio'), '.1f', 'x')} "
            f"| {_fmt(r.get('train_img_s'), ',.1f')} | {_fmt(r.get('train_ratio'), '.2f', 'x')} "
            f"| {_fmt(r.get('peak_host_mb'), ',.0f')} | {_fmt(r.get('peak_gpu_mb'), ',.0f')} |")
    return "\n".join(lines)


def machine_info(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cifar_rows(args) -> tuple[list, str | None]:
    """Rows from ``benchmarks/bench_cifar.py`` (run in a subprocess, its JSON converted), or ([], why not).

    bench_cifar.py measures training only (ResNet50 at 224 on CIFAR-10: PIL ``Resize(224)`` per
    image against notebook 07's GPU-resident path, and the scratch CNN at 32 px), all in one
    process, so its peak host memory is one number for all its rows (in the notes).
    """
    script = HERE / "bench_cifar.py"
    if not script.exists():
        return [], "CIFAR-10 rows skipped: benchmarks/bench_cifar.py is not there."
    on_cpu = args.device == "cpu"
    batch_size = min(args.batch_size, 8) if on_cpu else args.batch_size  # ResNet50 at 224 on 2 cores: ~2 s per image
    steps = max(1, args.train_steps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cifar.json"
        cmd = [sys.executable, str(script), "--device", args.device, "--steps", str(steps),
               "--batch-size", str(batch_size), "--json", str(out)]
        if on_cpu:
            cmd += ["--warmup", "1", "--limit", "2000"]
        print("CIFAR-10: running benchmarks/bench_cifar.py ...", flush=True)
        child = subprocess.Popen(cmd)
        with PeakHostMemory(pid=child.pid) as memory:
            child.wait()
        if child.returncode != 0 or not out.exists():
            return [], f"CIFAR-10 rows skipped: bench_cifar.py failed (exit code {child.returncode})."
        report = json.loads(out.read_text())
    try:
        dataset = f"CIFAR-10 ({report['images']:,} images), ResNet50 at {report['size']} px"
        rows = [{"dataset": dataset, "pipeline": r["path"], "baseline": r["path"].startswith("(a)"),
                 "device": args.device, "batch_size": report["batch_size"], "load_img_s": None,
                 "train_img_s": r["img_per_s"], "peak_host_mb": None, "peak_gpu_mb": None}
                for r in report["resnet50"]]
        scratch = report.get("scratch_cnn")
        if scratch:
            rows.append({"dataset": "CIFAR-10, ScratchCNN at 32 px", "pipeline": scratch["path"], "baseline": False,
                         "device": args.device, "batch_size": None, "load_img_s": None,
                         "train_img_s": scratch["img_per_s"], "peak_host_mb": None, "peak_gpu_mb": None})
    except (KeyError, TypeError) as err:
        return [], f"CIFAR-10 rows skipped: bench_cifar.py's JSON has changed ({err!r}); update run.cifar_rows."
    note = (f"CIFAR-10 rows: benchmarks/bench_cifar.py ({report.get('data', '?')}), {steps} timed training steps, "
            f"training only (no separate loading measurement); one process for all its rows, peak host memory "
            f"{memory.peak_mb:,.0f} MB.")
    return [{key: row.get(key) for key in ROW_KEYS} for row in rows], note


# --- command line ------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, help="batches per data-loading measurement (cpu 40, cuda 50)")
    parser.add_argument("--train-steps", type=int,
                        help="timed training steps, after 1 warm-up step (cpu 2, cuda 30); 0 skips training")
    parser.add_argument("--batch-size", type=int, help="images per batch (cpu 16, cuda 128)")
    parser.add_argument("--pets-images", type=int,
                        help="size of the generated Pets set, rounded to whole breeds "
                             "(cpu 1850, cuda 7400 ~ the real 7,390)")
    parser.add_argument("--repeats", type=int,
                        help="data-loading measurements per pipeline; the median is reported (3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", choices=("pets", "cifar"), help="run one data set only")
    # internal: one pipeline in a subprocess
    parser.add_argument("--worker", choices=("original", "cached"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-pets-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.steps, args.batch_size, args.repeats, args.pets_images) < 1 or args.train_steps < 0:
        parser.error("--steps, --batch-size, --repeats and --pets-images must be >= 1, --train-steps >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:  # we are the subprocess of one pipeline
        args.pets_dir = args.worker_pets_dir
        row = run_pets_pipeline(args.worker, args)
        args.worker_out.write_text(json.dumps(row))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible to PyTorch here. Run on a GPU machine, or use --device cpu.")
        return 2
    started = time.perf_counter()
    load_before = load_average()
    rows, notes, setup = [], [], {}
    if args.only in (None, "pets"):
        from tlhelpers.tools.cache import (
            build_image_cache, cache_build_seconds, cache_paths, files_fingerprint, read_image_cache,
        )
        from tlhelpers.pets import PetsDataset

        args.pets_dir, args.pets_images, gen_seconds = ensure_bench_pets(args.pets_images)
        files = PetsDataset(args.pets_dir).files
        cached = read_image_cache(*cache_paths(files, PETS_CACHE_SIZE), files_fingerprint(files, PETS_CACHE_SIZE),
                                  len(files), PETS_CACHE_SIZE) is not None
        start = time.perf_counter()
        build_image_cache(files, PETS_CACHE_SIZE, progress=sys.stderr.isatty())  # the subprocess only opens it
        setup = {"pets_dir": str(args.pets_dir), "pets_images": len(files), "generate_seconds": gen_seconds,
                 "cache_seconds_now": time.perf_counter() - start,
                 "cache_build_seconds": cache_build_seconds(files, PETS_CACHE_SIZE)}
        how = (f"recorded when it was built; checking and opening it now took {setup['cache_seconds_now']:.2f} s"
               if cached else "built now")
        notes.append(f"Pets cache: {len(files):,} images decoded and resized once to {PETS_CACHE_SIZE}x"
                     f"{PETS_CACHE_SIZE} in {setup['cache_build_seconds']:.1f} s ({how}).")
        if gen_seconds is not None:
            notes.append(f"Generated the Pets set in {gen_seconds:.0f} s (once).")
        for pipeline in ("original", "cached"):
            print(f"Pets: measuring the {pipeline} pipeline ...", flush=True)
            rows.append(_run_in_subprocess(pipeline, args))
    if args.only in (None, "cifar"):
        extra, note = cifar_rows(args)
        rows.extend(extra)
        notes.append(note)
    add_ratios(rows)

    result = {"machine": machine_info(args.device), "load_average_before": load_before,
              "load_average_after": load_average(), "total_seconds": time.perf_counter() - started,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if not k.startswith("worker")},
              "setup": setup, "rows": rows, "notes": notes}
    machine = result["machine"]
    print()
    print(f"{machine['cpu']}, {machine['cores']} cores{', ' + machine['gpu'] if 'gpu' in machine else ''}; "
          f"torch {machine['torch']}; load average before {load_before}, after {result['load_average_after']}")
    print(f"steps {args.steps} x batch {args.batch_size} (median of {args.repeats}), "
          f"{args.train_steps} timed training steps; {result['total_seconds']:.0f} s in all")
    print(format_table(rows))
    for note in notes:
        print("-", note)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        part = args.json.with_name(args.json.name + ".part")
        part.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(part, args.json)
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
