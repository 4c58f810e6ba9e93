"""Start ``torchrun`` from Python and stop all of it again (notebook 10, the DDP benchmark and tests).

``torchrun`` (``python -m torch.distributed.run``) starts one worker process per ``--nproc_per_node``
and watches them: if one fails, it stops the others and exits non-zero. Started from a notebook or
a test, it must not outlive its caller: ``run_torchrun`` starts it in its own process group and,
on a timeout or Ctrl-C (interrupting the kernel), stops the whole group, workers included.

``--standalone`` makes torchrun pick a free local port for the rendezvous, so several runs on one
machine never collide on the default port 29500.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def torchrun_command(target, args=(), nproc: int = 2, module: bool = False) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N [-m] TARGET ARGS`` with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *(["-m"] if module else []), str(target), *map(str, args)]


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun and its workers (torchrun passes it on), SIGKILL after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(cmd, timeout: float | None = None, threads: int | None = None, cwd=None,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, stdout and stderr together; the group is stopped on a timeout
    or an interrupt (then the exception is raised again). ``threads`` sets ``OMP_NUM_THREADS`` per process."""
    env = dict(os.environ if env is None else env)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:  # TimeoutExpired, KeyboardInterrupt: nothing may keep running
        _stop_group(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def run_torchrun(target, args=(), nproc: int = 2, module: bool = False, timeout: float | None = None,
                 threads: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc [-m] target args``; see ``run_command`` (notebook 10)."""
    return run_command(torchrun_command(target, args, nproc, module), timeout, threads, cwd)
