"""Carries what the GLUE study needs to a GPU machine that reaches nothing: ``../shared``'s data and encoder, and the
Python packages its image lacks.

The device tool sends the repository and the paths named in ``carry`` (64 MiB in all), never ``../shared``. So:

``pack`` (here) writes ``.gpu/`` (git-ignored): ``shared/data/glue/{RTE,CoLA,SST-2}``, ``shared/data/wikitext-2``,
``shared/models/all-MiniLM-L6-v2`` with its weights stored in fp16 (91 MB in fp32 is over the limit; 45 MB in fp16),
and ``whl/``: the wheels of ``datasets`` and its two pure-Python needs that the GPU image does not hold.

``unpack`` (there) builds ``../shared``: the data linked from ``.gpu/shared``, the encoder widened back to fp32, so
every recipe and benchmark path (``../shared/...``) works unchanged. The dense encoder there is all-MiniLM-L6-v2 rounded to fp16
(relative error about 5e-4 per weight): results from such a run are kept apart (``benchmarks/results/*_gpu``) and
say so.

Usage::

    python benchmarks/gpu_pack.py pack                 # here, once: then carry .gpu
    python3 benchmarks/gpu_pack.py unpack              # there, first thing (benchmarks/gpu_glue_study.sh does it)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = os.path.join(REPO, ".gpu")
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared"))
MODEL = "models/all-MiniLM-L6-v2"
DATA = ["data/glue/RTE", "data/glue/CoLA", "data/glue/SST-2", "data/wikitext-2"]
FP16_NAME = "model.fp16.safetensors"
# What the GPU image lacks (its package list: /work/.library/device/KINDS.md); pure Python, Python 3.12.
WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19"]


def pack() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(PACK, ignore_errors=True)
    for part in DATA:
        shutil.copytree(os.path.join(SHARED, part), os.path.join(PACK, "shared", part))
    source, target = os.path.join(SHARED, MODEL), os.path.join(PACK, "shared", MODEL)
    os.makedirs(target)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and name not in ("model.safetensors", "pytorch_model.bin", "README.md"):
            shutil.copy(path, target)
    weights = load_file(os.path.join(source, "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
              os.path.join(target, FP16_NAME), metadata={"format": "pt"})
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux2014_x86_64", "-d", os.path.join(PACK, "whl"), *WHEELS], check=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(PACK) for f in files)
    print(f"{PACK}: {size / 2**20:.1f} MiB (the device tool carries 64 MiB with the repository)")


def unpack(shared: str = SHARED) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    if os.path.exists(shared):
        raise SystemExit(f"{shared} exists: unpack builds it on the GPU machine, where it does not.")
    for part in DATA:
        os.makedirs(os.path.dirname(os.path.join(shared, part)), exist_ok=True)
        os.symlink(os.path.join(PACK, "shared", part), os.path.join(shared, part))
    source, target = os.path.join(PACK, "shared", MODEL), os.path.join(shared, MODEL)
    os.makedirs(target)
    for name in os.listdir(source):
        if name != FP16_NAME:
            shutil.copy(os.path.join(source, name), target)
    weights = load_file(os.path.join(source, FP16_NAME))
    save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in weights.items()},
              os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
    print(f"{shared}: data linked from {PACK}/shared, {MODEL} widened to fp32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    args = parser.parse_args(argv)
    pack() if args.action == "pack" else unpack()
    return 0


if __name__ == "__main__":
    sys.exit(main())
