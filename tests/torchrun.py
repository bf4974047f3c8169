"""Launching a module under ``torchrun`` with CPU workers (gloo), for the tests that check several processes.

Shared by the DDP, FSDP2 and vision tests, so that each launch has the same guards: a free port, a process session
of its own (a hang is cleaned up with every worker), a timeout, and a failure message that ends with what the workers
printed when they died (CI shows the tail of the output).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Sequence

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a dying worker prints: a Python traceback's last line, a C++ exception (gloo's), a fatal error.
_ROOT_CAUSE = re.compile(r"Error\b|Exception\b|terminate called|what\(\):|Fatal Python error|Segmentation fault|abort")


def free_port() -> int:
    # torchrun's --master_port 0 hangs with the static rendezvous: ask the OS for a free port instead.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_signals(stderr: str) -> list[int] | None:
    """The signals the failed workers died of, from torchrun's error summary; ``None`` if one of them exited with a
    status of its own (a Python exception, an ``exit(1)``), which is the code's failure, not the machine's, or if a
    worker printed a Python traceback before torchrun stopped it with SIGTERM (torchrun then records -15 for it)."""
    codes = [int(code) for code in re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", stderr, flags=re.MULTILINE)]
    if not codes or any(code >= 0 for code in codes):
        return None
    # torchrun's own traceback (it raises ChildFailedError) is the only one a run lost to signals prints.
    if stderr.count("Traceback (most recent call last):") > ("ChildFailedError" in stderr):
        return None
    return [-code for code in codes]


def _failure(command: list[str], what: str, stdout: str, stderr: str) -> str:
    causes = [
        line.strip() for line in stderr.splitlines()
        if _ROOT_CAUSE.search(line) and "ChildFailedError" not in line  # torchrun's own report of the failure
    ]
    return (
        f"{' '.join(command)} {what}:\n{stdout[-2000:]}\n{stderr[-4000:]}\n"
        "What the workers printed as they failed (last 15 such lines):\n" + "\n".join(causes[-15:])
    )


def _run(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(_failure(command, f"did not finish in {timeout} s", stdout, stderr))
    return process.returncode, stdout, stderr


def torchrun(
    module: str, arguments: Sequence[str], processes: int = 2, timeout: float = 300, fresh: Sequence[str] = ()
) -> None:
    """Runs ``python -m module arguments`` under torchrun with ``processes`` CPU workers; fails the test on error.

    A run whose workers all died of a signal (gloo on CPU has aborted a worker once in many CI runs, with no error of
    ours before it; PyTorch's own gloo tests have such aborts, e.g. pytorch/pytorch#65237) is run once more, after
    deleting the folders in ``fresh`` (its outputs, so the second run starts as the first did), with a warning that
    keeps what the first printed. A worker that raised (even one that torchrun
    then stopped with SIGTERM), a wrong result and a hang (the symptom of ranks that disagree on their collectives)
    fail at once.
    """
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO,
        "PYTHONFAULTHANDLER": "1",  # a worker killed by a signal prints every thread's Python stack
    }
    for attempt in range(2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", module, *arguments,
        ]
        returncode, stdout, stderr = _run(command, env, timeout)
        if returncode == 0:
            return
        signals = worker_signals(stderr)
        if attempt == 1 or signals is None:
            pytest.fail(_failure(command, f"failed (exit {returncode})", stdout, stderr))
        warnings.warn(_failure(command, f"lost workers to signals {signals}; running it once more", stdout, stderr))
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
