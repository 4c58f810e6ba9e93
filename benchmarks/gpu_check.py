"""One command for the course's GPU numbers: throughput, notebook 07's full-mode results, memory.

    python benchmarks/gpu_check.py --cifar cifar10-jpeg-train.zip --pets oxford-iiit-pet/
    python benchmarks/gpu_check.py --tiny --device cpu          # CI: every section, tiny, on a CPU

Writes one JSON file (``--out``, default ``build/gpu_check.json``) and prints a table:

1. ResNet50 at 224 px, training throughput (img/s) on CIFAR-10 images, three ways, each through
   the course's own loop (``fit_one_cycle`` with ``max_steps``, bf16 autocast on CUDA as the recipe
   does): (a) the per-image PIL pipeline (``Resize(224)``, crop, flip, ``ToTensor``, ``Normalize``
   in DataLoader workers); (b) the GPU-resident path of notebook 07 (``GPUBatchLoader``: uint8
   images on the device, crop/flip/upsample/normalise per batch there), eager; (c) (b) with
   ``torch.compile`` (its compile time is reported separately: the first, untimed epoch).
2. Notebook 07 in full mode on the CIFAR-10 image-folder zip given with ``--cifar``, executed as it
   is (its own cells, its own recipe): the scratch CNN's and the pretrained ResNet50's held-out
   (test) accuracy and training seconds.
3. With ``--pets``: the ResNet34 Pets recipe of notebook 06 (``make_pets_splits``, ``make_loaders``
   with workers, ``fit_one_cycle`` with AdamW, clipping, weight decay) at 224 px, training img/s.
4. The GPU's name and the peak GPU memory of each section.

Needs torchvision's ImageNet weights for ResNet50 and ResNet34 in ``$TORCH_HOME/hub/checkpoints``
(it never downloads: ``TLH_OFFLINE=1``); see benchmarks/README.md for what to copy to a machine
without internet. ``--tiny`` uses random weights under torchvision's file names in a temporary
``TORCH_HOME`` (like ``run_course.sh --smoke``), the course's CIFAR-10 and Pets samples, a few
batches of a few images: it checks that this script runs, not what the GPU can do.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

#: --tiny: steps, batch size, images (small enough for CI on a 2-core CPU)
TINY = {"steps": 2, "warmup": 1, "batch_size": 2, "images": 64, "max_steps": "2", "max_batch_size": "4"}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None


def train_throughput(model, train_dl, valid_dl, device, steps: int, warmup: int, batch_size: int,
                     opt_func=None, **fit_kwargs) -> dict:
    """Images per second of ``fit_one_cycle`` over ``steps`` batches, after an untimed ``warmup`` epoch.

    One call of the course's loop per measurement: an epoch of ``warmup`` steps (worker start-up,
    cuDNN autotuning, ``torch.compile``), then an epoch of ``steps`` steps. The validation pass at
    the end of each epoch (one small batch) is timed separately and taken out.
    """
    import torch

    from tlhelpers.finetune import fit_one_cycle
    from tlhelpers.training import evaluate

    opt_func = opt_func or torch.optim.SGD
    amp = device.type == "cuda"
    _reset_peak(device)
    start = time.perf_counter()
    fit_one_cycle(1, 1e-3, model, train_dl, valid_dl, opt_func=opt_func, amp=amp, max_steps=warmup, **fit_kwargs)
    _sync(device)
    warmup_s = time.perf_counter() - start
    history = fit_one_cycle(1, 1e-3, model, train_dl, valid_dl, opt_func=opt_func, amp=amp, max_steps=steps,
                            **fit_kwargs)
    _sync(device)
    start = time.perf_counter()
    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
        evaluate(model, valid_dl, max_steps=steps)
    _sync(device)
    eval_s = time.perf_counter() - start
    train_s = max(history[0]["epoch_time"] - eval_s, 1e-9)
    done = len(history[0]["lrs"])
    return {"img_per_s": round(done * batch_size / train_s, 1), "steps": done, "batch_size": batch_size,
            "train_seconds": round(train_s, 2), "warmup_seconds": round(warmup_s, 2), "peak_gpu_mb": _peak_mb(device)}


def resnet50_throughput(images, labels, device, args) -> list[dict]:
    """Section 1: ResNet50 at 224 px, the per-image PIL pipeline vs the GPU-resident path (eager, compiled)."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD
    from tlhelpers.tools.gpu_data import GPUBatchLoader
    from tlhelpers.training import DeviceDataLoader, PretrainedClassifier

    sys.path.insert(0, str(HERE))
    from bench_cifar import PILCifar  # the per-image dataset of the CIFAR-10 benchmark

    size, bs = 224, args.batch_size
    channels_last = device.type == "cuda"
    gpu = dict(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=channels_last, device=device)
    val_images, val_labels = images[:bs], labels[:bs]
    gpu_valid = GPUBatchLoader(val_images, val_labels, bs, train=False, **gpu)

    def model():
        torch.manual_seed(0)
        net = PretrainedClassifier("resnet50", 10).to(device)
        return net.to(memory_format=torch.channels_last) if channels_last else net

    rows = []
    per_image = T.Compose([T.Resize(size), T.RandomCrop(size, padding=28, padding_mode="reflect"),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    pil_train = DataLoader(PILCifar(images, labels, per_image), bs, shuffle=True, num_workers=args.workers,
                           persistent_workers=args.workers > 0, pin_memory=device.type == "cuda", drop_last=True)
    result = train_throughput(model(), DeviceDataLoader(pil_train, device), gpu_valid, device,
                              args.steps, args.warmup, bs)
    rows.append({"section": "ResNet50 224px", "path": f"(a) per-image PIL, {args.workers} workers", **result})

    gpu_train = GPUBatchLoader(images, labels, bs, train=True, pad=4, drop_last=True, seed=0, **gpu)
    result = train_throughput(model(), gpu_train, gpu_valid, device, args.steps, args.warmup, bs)
    rows.append({"section": "ResNet50 224px", "path": "(b) GPU-resident (GPUBatchLoader), eager", **result})

    compiled = model()
    compiled.network = torch.compile(compiled.network, backend=args.compile_backend)
    result = train_throughput(compiled, gpu_train, gpu_valid, device, args.steps, args.warmup, bs)
    # the first epoch compiles (training and evaluation graphs): its extra time over the eager first epoch
    result["compile_seconds"] = round(result["warmup_seconds"] - rows[-1]["warmup_seconds"], 2)
    rows.append({"section": "ResNet50 224px", "path": f"(c) GPU-resident, torch.compile ({args.compile_backend})",
                 **result})
    return rows


def pets_throughput(pets_dir, device, args) -> dict:
    """Section 3: notebook 06's ResNet34 recipe at 224 px on a Pets-layout folder, training img/s."""
    import torch

    from tlhelpers.pets import make_loaders, make_pets_splits
    from tlhelpers.tools.backbones import BACKBONES
    from tlhelpers.tools.images import default_num_workers
    from tlhelpers.tools.samples import check_pets_folder
    from tlhelpers.training import DeviceDataLoader, PretrainedClassifier

    folder = check_pets_folder(pets_dir)
    entry = BACKBONES["resnet34"]
    train_ds, valid_ds = make_pets_splits(folder, 224, 0.2, seed=42, mean=entry.mean, std=entry.std)
    workers = args.workers if args.tiny else max(default_num_workers(), args.workers)
    train_dl, valid_dl = make_loaders(train_ds, valid_ds, args.pets_batch_size, num_workers=workers, seed=42)
    torch.manual_seed(0)
    model = PretrainedClassifier("resnet34", len(train_ds.dataset.classes)).to(device)
    result = train_throughput(model, DeviceDataLoader(train_dl, device), DeviceDataLoader(valid_dl, device), device,
                              args.steps, args.warmup, train_dl.batch_size, opt_func=torch.optim.AdamW,
                              weight_decay=1e-2, grad_clip=0.1)
    return {"section": "Pets ResNet34 224px", "path": f"notebook 06 recipe, per-image, {workers} workers",
            "images": len(train_ds) + len(valid_ds), **result}


def notebook07_full_mode(cifar, env: dict, timeout: int) -> dict:
    """Section 2: notebooks/07 executed in full mode on ``cifar``; its ``results`` table and the peak GPU memory."""
    import nbformat
    from nbclient import NotebookClient

    path = REPO / "notebooks" / "07_cifar10_resnet50_vs_scratch.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json\n"
        "_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None\n"
        "print('GPU_CHECK ' + _json.dumps({'results': results.reset_index().to_dict(orient='records'), "
        "'peak_gpu_mb': _peak, 'device': str(device)}))"))
    saved = dict(os.environ)
    os.environ.update({"TLH_QUICK": "0", "TLH_CIFAR10_DIR": str(cifar), "MPLBACKEND": "Agg", **env})
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs if out.get("output_type") == "stream")
    payload = json.loads(text.split("GPU_CHECK ", 1)[1])
    rows = {row["model"]: row for row in payload["results"]}
    scratch = rows["CNN from scratch"]
    pretrained = next(row for name, row in rows.items() if name != "CNN from scratch")
    return {"section": "notebook 07, full mode", "data": str(cifar), "notebook_seconds": round(seconds, 1),
            "peak_gpu_mb": payload["peak_gpu_mb"] and round(payload["peak_gpu_mb"]),
            "scratch": {"test_acc": scratch["test acc"], "test_acc_flip_tta": scratch["test acc, flip TTA"],
                        "train_seconds": scratch["training time (s)"], "epochs": scratch["epochs"]},
            "pretrained": {"model": pretrained["model"], "test_acc": pretrained["test acc"],
                           "test_acc_flip_tta": pretrained["test acc, flip TTA"],
                           "train_seconds": pretrained["training time (s)"], "epochs": pretrained["epochs"]}}


def format_table(report: dict) -> str:
    lines = [f"GPU check on {report['device_name']} ({report['device']}), torch {report['torch']}"
             + ("  [TINY: random weights, a few images; checks that the script runs]" if report["tiny"] else ""),
             "", "| what | how | img/s | steps x batch | compile s | peak GPU MB |", "|---|---|---:|---|---:|---:|"]
    for row in report["throughput"]:
        lines.append(f"| {row['section']} | {row['path']} | {row['img_per_s']:,.1f} | {row['steps']} x {row['batch_size']} "
                     f"| {row.get('compile_seconds', '-')} | {row['peak_gpu_mb'] if row['peak_gpu_mb'] is not None else '-'} |")
    nb07 = report.get("notebook07")
    if nb07:
        lines += ["", f"Notebook 07, full mode, on {nb07['data']} ({nb07['notebook_seconds']} s for the whole notebook, "
                  f"peak GPU {nb07['peak_gpu_mb'] if nb07['peak_gpu_mb'] is not None else '-'} MB):",
                  "| model | test acc | test acc, flip TTA | training s | epochs |", "|---|---:|---:|---:|---:|"]
        for name, run in (("CNN from scratch", nb07["scratch"]), (nb07["pretrained"]["model"], nb07["pretrained"])):
            lines.append(f"| {name} | {run['test_acc']:.4f} | {run['test_acc_flip_tta']:.4f} | {run['train_seconds']:.1f} "
                         f"| {run['epochs']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The course's GPU numbers in one run: one JSON file and a table.")
    parser.add_argument("--cifar", type=Path, help="CIFAR-10 image-folder zip (train/<class>/*.jpg) for notebook 07 "
                                                   "and the throughput rows (default with --tiny: the course's sample)")
    parser.add_argument("--pets", type=Path, help="an Oxford-IIIT Pet folder (images/) for the ResNet34 recipe row")
    parser.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu_check.json")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per throughput row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compiles with torch.compile)")
    parser.add_argument("--batch-size", type=int, default=128, help="ResNet50 rows (notebook 07's full-mode batch)")
    parser.add_argument("--pets-batch-size", type=int, default=64, help="ResNet34 Pets row (notebook 06's)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the per-image rows")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of row (c) (default inductor; with --tiny: eager, which checks "
                             "the capture without minutes of C++ compilation on a CPU)")
    parser.add_argument("--skip-notebook", action="store_true", help="leave out notebook 07 (section 2)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per notebook cell")
    parser.add_argument("--tiny", action="store_true", help="CI: random weights, a few images and steps (any device)")
    args = parser.parse_args(argv)

    env = {"TLH_OFFLINE": "1"}
    os.environ["TLH_OFFLINE"] = "1"  # before tlhelpers.config reads it: never download weights
    work = None
    if args.tiny:  # before torch reads TORCH_HOME and tlhelpers reads its switches
        from tlhelpers.tools.run_course import random_torch_home
        from tlhelpers.tools.samples import CIFAR10_SAMPLE, real_pets_sample

        work = tempfile.TemporaryDirectory(prefix="tlh-gpu-check-")
        root = Path(work.name)
        random_torch_home(root / "torch", ["resnet34", "resnet50"])
        env.update({"TORCH_HOME": str(root / "torch"), "TLH_DATA_DIR": str(root / "data"), "TLH_SMOKE": "1",
                    "TLH_MAX_STEPS": TINY["max_steps"], "TLH_MAX_BATCH_SIZE": TINY["max_batch_size"]})
        args.cifar = args.cifar or CIFAR10_SAMPLE
        args.pets = args.pets or real_pets_sample(root / "pets")
        args.steps, args.warmup, args.batch_size, args.pets_batch_size = \
            TINY["steps"], TINY["warmup"], TINY["batch_size"], TINY["batch_size"]
        args.workers = min(args.workers, 2)
        args.compile_backend = args.compile_backend or "eager"
        print("TINY MODE: random weights, a few images and steps: this checks that the script runs, "
              "not what the hardware can do.")
    args.compile_backend = args.compile_backend or "inductor"
    os.environ.update({key: value for key, value in env.items() if key != "TLH_SMOKE" and not key.startswith("TLH_MAX")})

    import torch

    from tlhelpers.tools.cifar_data import load_cifar10

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False)")
    if args.cifar is None:
        parser.error("--cifar is required (a CIFAR-10 image-folder zip such as cifar10-jpeg-train.zip), or use --tiny")
    if not Path(args.cifar).exists():
        parser.error(f"--cifar {args.cifar} does not exist")

    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "python": platform.python_version(), "cpus": os.cpu_count(), "tiny": args.tiny,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "throughput": []}
    start = time.perf_counter()
    images, labels, _ = load_cifar10(args.cifar)
    if args.tiny:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:TINY["images"]]
        images, labels = images[keep], labels[keep]  # every class, not the first class only
    report["throughput"] += resnet50_throughput(images, labels, device, args)
    if args.pets:
        report["throughput"].append(pets_throughput(args.pets, device, args))
    if not args.skip_notebook:
        report["notebook07"] = notebook07_full_mode(args.cifar, env, args.timeout)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    if device.type == "cuda":
        report["peak_gpu_mb_process"] = _peak_mb(device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"\n{report['total_seconds']} s in all; JSON: {args.out}")
    if work is not None:
        work.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
