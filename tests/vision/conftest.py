"""Tiny image data built in-process: 3 classes of 16x16 colour images, as a folder and as a zip."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ("cat", "dog", "fox")

# Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine OpenMP's spinning
# threads make them several times slower (measured: 11 s -> 1.4 s for a 4-epoch run under load).
torch.set_num_threads(1)


def make_image_folder(root, n_train: int = 12, n_val: int = 6, size: int = 16) -> str:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(CLASSES):
            d = os.path.join(root, split, name)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                # a class-dependent colour plus noise, so that a tiny model can learn something
                base = np.zeros((size, size, 3), dtype=np.float32)
                base[..., c] = 170
                img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(d, f"{i:03d}.png"))
    return str(root)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "data")


@pytest.fixture(scope="session")
def image_zip(image_folder, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("zip") / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for dirpath, _, files in os.walk(image_folder):
            for name in files:
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.join("data", os.path.relpath(full, image_folder)))
    return str(path)
