"""Training throughput on CIFAR-10 at 224 px: the per-image PIL pipeline vs our GPU-resident path (notebook 07).

Measures ResNet50 training (random weights: throughput does not depend on them) with the same
training step (``train_steps``: forward, cross entropy, backward, SGD step), in the same run and
on the same images:

  (a) baseline, the original write-up's path: PIL ``Resize(224)``, ``RandomCrop``, flip,
      ``ToTensor``, ``Normalize`` per image in DataLoader workers; fp32; ``.to(device)`` per batch;
  (b) ours: the images stay on the device as one uint8 tensor (``GPUBatchLoader``): crop, flip,
      upsampling to 224 and normalisation per batch on the device; bf16 autocast (CUDA) and
      ``channels_last``;
  (c) (b) with ``torch.compile`` (``--compile``);

and the scratch CNN of notebook 07 on path (b) at 32 px. Prints one table, writes JSON.

    python benchmarks/bench_cifar.py --data ../shared/data/cifar10-jpeg-train.zip --device cuda --compile
    python benchmarks/bench_cifar.py --device cpu --steps 3 --batch-size 8      # a smoke run

Without ``--data`` (or ``TLH_CIFAR10_DIR``, read by ``tlhelpers.config``), random images stand
in: throughput is the same.
The baseline's workers read decoded arrays, not JPEG files, so they do less work than the
original write-up did: the ratio is, if anything, an underestimate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from tlhelpers import config  # noqa: E402
from tlhelpers.cifar import ScratchCNN  # noqa: E402
from tlhelpers.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from tlhelpers.tools.cifar_data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10  # noqa: E402
from tlhelpers.tools.gpu_data import GPUBatchLoader  # noqa: E402


class PILCifar(torch.utils.data.Dataset):
    """(N, 3, 32, 32) uint8 images served one PIL image at a time through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3) for PIL
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class Take:
    """The first ``steps`` batches of a loader, as one 'epoch' (starts a fresh iterator each time)."""

    def __init__(self, dl, steps: int):
        self.dl, self.steps = dl, steps
        self.device = getattr(dl, "device", None)

    def __iter__(self):
        it = iter(self.dl)
        for _ in range(self.steps):
            try:
                yield next(it)
            except StopIteration:  # a short dataset: start another pass
                it = iter(self.dl)
                yield next(it)

    def __len__(self):
        return self.steps


def _fmt(img_per_s: float) -> str:
    """Thousands separators on a GPU, one decimal for the small numbers of a CPU smoke run."""
    return f"{img_per_s:,.0f}" if img_per_s >= 100 else f"{img_per_s:.1f}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(model: nn.Module, batches, optimizer, device, amp: bool = False, grad_clip: float | None = None):
    """One training step per batch, as the course's loops do it: batches moved to ``device`` (a no-op
    for ``GPUBatchLoader``), bf16 autocast when ``amp``, cross entropy, backward, optional clipping, step."""
    model.train()
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure(model: nn.Module, loader, device, steps: int, warmup: int, batch_size: int, amp: bool,
            channels_last: bool) -> dict:
    """Images per second of ``train_steps`` over ``steps`` batches, after ``warmup`` batches."""
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if warmup:  # cuDNN autotuning, torch.compile, worker start-up
        train_steps(model, Take(loader, warmup), optimizer, device, amp)
    _sync(device)
    start = time.perf_counter()
    train_steps(model, Take(loader, steps), optimizer, device, amp)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"img_per_s": steps * batch_size / seconds, "seconds": seconds, "steps": steps}


def load_images(data, limit: int | None):
    """Decoded CIFAR-10 arrays from ``data`` (or ``TLH_CIFAR10_DIR``), else random images."""
    data = data or config.CIFAR10_DIR
    if data:
        images, labels, _ = load_cifar10(data)
        source = str(data)
    else:
        n = limit or 50_000
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        source = "random images (no --data given)"
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels, source


def resnet50(num_classes: int = 10) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None, num_classes=num_classes)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="CIFAR-10 image-folder copy (folder or .zip); default TLH_CIFAR10_DIR or random")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: min(10, steps))")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline (Colab has 2 CPUs)")
    parser.add_argument("--size", type=int, default=224, help="input size of ResNet50")
    parser.add_argument("--compile", action="store_true", help="also measure (b) with torch.compile")
    parser.add_argument("--scratch-batch-size", type=int, default=None,
                        help="batch size of the scratch CNN (default: 512 on CUDA, --batch-size elsewhere)")
    parser.add_argument("--limit", type=int, default=None, help="use only this many images")
    parser.add_argument("--json", default="bench_cifar.json", help="where to write the results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.scratch_batch_size is None:
        args.scratch_batch_size = 512 if device.type == "cuda" else args.batch_size
    warmup = min(10, args.steps) if args.warmup is None else args.warmup
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, labels, source = load_images(args.data, args.limit)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {name}   torch {torch.__version__}   data: {source} ({len(labels):,} images)")
    print(f"ResNet50 training at {args.size} px, batch {args.batch_size}, {args.steps} timed steps after {warmup} warm-up steps\n")
    bs, common = args.batch_size, dict(steps=args.steps, warmup=warmup)
    rows = []

    # (a) the original path: PIL transforms per image in worker processes, fp32
    from torchvision import transforms as T

    pil_transform = T.Compose([
        T.Resize(args.size), T.RandomCrop(args.size, padding=args.size // 8, padding_mode="reflect"),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    pil_dl = torch.utils.data.DataLoader(
        PILCifar(images, labels, pil_transform), batch_size=bs, shuffle=True, drop_last=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    result = measure(resnet50(), pil_dl, device, batch_size=bs, amp=False, channels_last=False, **common)
    rows.append({"path": f"(a) PIL Resize({args.size}) per image, {args.workers} workers, fp32", **result})
    del pil_dl

    # (b) ours: uint8 on the device, augmentation and upsampling per batch on the device
    gpu_dl = GPUBatchLoader(images, labels, bs, train=True, pad=4, size=args.size, mean=IMAGENET_MEAN,
                            std=IMAGENET_STD, channels_last=True, drop_last=True, device=device)
    amp = device.type == "cuda"  # bf16 autocast on CUDA
    precision = "bf16 autocast" if amp else "fp32"
    result = measure(resnet50(), gpu_dl, device, batch_size=bs, amp=amp, channels_last=True, **common)
    rows.append({"path": f"(b) GPU-resident uint8, {precision}, channels_last", **result})

    if args.compile:
        result = measure(torch.compile(resnet50()), gpu_dl, device, batch_size=bs, amp=amp,
                         channels_last=True, **common)
        rows.append({"path": "(c) (b) + torch.compile", **result})
    base = rows[0]["img_per_s"]
    for row in rows:
        row["ratio"] = row["img_per_s"] / base
    del gpu_dl

    # the scratch CNN of notebook 07 on the GPU-resident path at 32 px
    scratch_dl = GPUBatchLoader(images, labels, args.scratch_batch_size, train=True, pad=4, mean=CIFAR10_MEAN,
                                std=CIFAR10_STD, channels_last=True, drop_last=True, device=device)
    torch.manual_seed(0)
    scratch = measure(ScratchCNN(), scratch_dl, device, batch_size=args.scratch_batch_size, amp=amp,
                      channels_last=True, **common)
    scratch["epoch_seconds_45k"] = 45_000 / scratch["img_per_s"]
    scratch["path"] = f"ScratchCNN 32 px, GPU-resident, {precision}, batch {args.scratch_batch_size}"

    width = max(len(r["path"]) for r in rows + [scratch]) + 2
    print(f"{'path':<{width}}{'img/s':>10}{'x baseline':>12}")
    for row in rows:
        print(f"{row['path']:<{width}}{_fmt(row['img_per_s']):>10}{row['ratio']:>11.2f}x")
    print(f"{scratch['path']:<{width}}{_fmt(scratch['img_per_s']):>10}   "
          f"(an epoch of 45,000 images: {scratch['epoch_seconds_45k']:.1f} s)")

    report = {"device": name, "torch": torch.__version__, "data": source, "images": len(labels),
              "size": args.size, "batch_size": bs, "steps": args.steps, "warmup": warmup,
              "workers": args.workers, "resnet50": rows, "scratch_cnn": scratch}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(part, out)
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
