"""Scaling of the course's training loop with DistributedDataParallel: images per second for 1, 2, ... processes.

    python benchmarks/bench_ddp.py                        # CPU: 1 and 2 processes, Gloo, one thread each
    python benchmarks/bench_ddp.py --procs 1 2 4 8        # a machine with 8 GPUs: one process per GPU, NCCL
    python benchmarks/bench_ddp.py --json build/bench-ddp.json

Each row is one ``torchrun --standalone --nproc_per_node=N`` run of this file in worker mode. Every
process trains notebook 05's ``PretrainedClassifier`` (all stages unfrozen: the full backward pass)
with notebook 06's ``fit_one_cycle`` on random images (throughput does not depend on the pixels),
through notebook 10's ``distributed_loaders`` and ``DistributedClassifier``. ``--batch-size`` is the
batch of **one process** (weak scaling: N processes train on N times as many images per step).
The first epoch is a warm-up; the second is timed (its ``epoch_time``, which includes a one-batch
validation). On a GPU machine, ``setup_distributed`` gives each process its own GPU and mixed
precision is on.

- **img/s**: training images per second, all processes together;
- **efficiency**: img/s with N processes / (N x img/s with one process). 100% is perfect scaling;
  on a CPU the processes share the memory bandwidth and one core runs the Gloo communication too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

RESULT = "RESULT "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to measure (default: 1 2)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="images per process and step (default: 16)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads per process (default: 1 on a CPU, torch's choice on GPUs)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per run")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def worker(args) -> None:
    """One process of a torchrun run: time one epoch of fit_one_cycle after a warm-up epoch."""
    import torch
    from torch.utils.data import TensorDataset

    from tlhelpers.distributed import (DistributedClassifier, all_succeeded, cleanup_distributed,
                                       distributed_loaders, rank_and_world_size, setup_distributed)
    from tlhelpers.finetune import fit_one_cycle
    from tlhelpers.training import DeviceDataLoader, PretrainedClassifier

    torch.set_flush_denormal(True)
    device = setup_distributed()
    rank, world_size = rank_and_world_size()
    global_batch = args.batch_size * world_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(global_batch * args.steps, 3, args.image_size, args.image_size, generator=g)
    train_ds = TensorDataset(images, torch.randint(0, 10, (len(images),), generator=g))
    valid_ds = TensorDataset(images[:world_size], train_ds.tensors[1][:world_size])  # one image per process
    train_dl, valid_dl = distributed_loaders(train_ds, valid_ds, global_batch)
    torch.manual_seed(0)
    model = PretrainedClassifier(args.backbone, 10, pretrained=False).to(device)
    model.unfreeze(None)  # the full backward pass, as in fine-tuning
    net = DistributedClassifier(model) if world_size > 1 else model
    history = fit_one_cycle(2, 1e-3, net, DeviceDataLoader(train_dl, device), DeviceDataLoader(valid_dl, device),
                            opt_func=torch.optim.AdamW, amp=device.type == "cuda", max_steps=None)
    seconds = history[1]["epoch_time"]
    if all_succeeded() and rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
        print(RESULT + json.dumps({
            "processes": world_size, "device": device.type, "device_name": name,
            "backend": torch.distributed.get_backend() if world_size > 1 else None,
            "threads_per_process": torch.get_num_threads(), "batch_per_process": args.batch_size,
            "image_size": args.image_size, "backbone": args.backbone, "steps": len(history[1]["lrs"]),
            "seconds": seconds, "img_s": len(history[1]["lrs"]) * global_batch / seconds}), flush=True)
    cleanup_distributed()


def measure(args, procs: int) -> dict:
    from tlhelpers.tools.launch import run_torchrun

    import torch

    threads = args.threads if args.threads is not None else (None if torch.cuda.is_available() else 1)
    worker_args = ["--worker", "--backbone", args.backbone, "--image-size", args.image_size,
                   "--batch-size", args.batch_size, "--steps", args.steps]
    done = run_torchrun(Path(__file__), worker_args, nproc=procs, timeout=args.timeout, threads=threads, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{procs} process(es) failed (exit code {done.returncode}):\n{done.stdout[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    rows = []
    for procs in args.procs:
        row = measure(args, procs)
        rows.append(row)
        print(f"  {procs} process(es): {row['img_s']:.1f} img/s", flush=True)
    base = next((r["img_s"] for r in rows if r["processes"] == 1), None)
    for row in rows:
        row["efficiency"] = row["img_s"] / (row["processes"] * base) if base else None
    first = rows[0]
    print(f"\n{first['backbone']} at {first['image_size']} px, {first['batch_per_process']} images per process and step, "
          f"{first['device_name']} ({first['device']}), {first['threads_per_process']} thread(s) per process, "
          f"{os.cpu_count()} CPUs, torch {__import__('torch').__version__}")
    print(f"{'processes':>9} {'backend':>8} {'img/s':>8} {'efficiency':>10}")
    for row in rows:
        eff = f"{row['efficiency']:.0%}" if row["efficiency"] is not None else "-"
        print(f"{row['processes']:>9} {row['backend'] or '-':>8} {row['img_s']:>8.1f} {eff:>10}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count(), "python": platform.python_version()},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
