"""Image data for the vision loop: an ImageFolder directory, a zip of one, or a `datasets` image dataset.

All three yield ``(PIL image, int label)`` and take a ``transform`` attribute that can be swapped between
epochs (progressive resizing); the transforms are timm's.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
EVAL_SPLITS = ("val", "validation", "test")


class ImageListDataset(Dataset):
    """Images read by a ``load(index) -> PIL.Image`` function, with integer labels and a swappable transform."""

    def __init__(self, labels: Sequence[int], classes: list[str], transform=None):
        self.labels = list(labels)
        self.classes = classes
        self.transform = transform
        self._cache: list[Image.Image] | None = None

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages."""
        return f"image {index}"

    def load_checked(self, index: int) -> Image.Image:
        """:meth:`load` with an error that names the unreadable file (PIL's own only says "cannot identify")."""
        try:
            return self.load(index)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for truncated or foreign files
            raise ValueError(
                f"Could not read {self.describe(index)} ({type(e).__name__}: {e}). Remove or replace the file; "
                "every file with an image extension in a class folder must be a readable image."
            ) from e

    def __len__(self) -> int:
        return len(self.labels)

    def cache_(self) -> None:
        """Decodes every image once and keeps it in memory (for small data sets)."""
        self._cache = [self.load_checked(i) for i in range(len(self))]

    def __getitem__(self, index: int):
        image = self._cache[index] if self._cache is not None else self.load_checked(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class FolderImages(ImageListDataset):
    """``root/<class>/<image>`` on disk."""

    def __init__(self, root: str, classes: list[str] | None = None, transform=None):
        found = sorted(d.name for d in os.scandir(root) if d.is_dir())
        if not found:
            raise ValueError(
                f"{root} has no class folders: an ImageFolder split must look like {root}/<class_name>/<image>.jpg."
            )
        classes = classes or found
        index = {c: i for i, c in enumerate(classes)}
        self.paths, labels = [], []
        for c in found:
            if c not in index:
                raise ValueError(f"Class folder {c!r} in {root} is not among the training classes.")
            for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        self.paths.append(os.path.join(dirpath, name))
                        labels.append(index[c])
        if not self.paths:
            raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}.")
        super().__init__(labels, classes, transform)

    def describe(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as im:
            return im.convert("RGB")


class ZipImages(ImageListDataset):
    """``<prefix>/<split>/<class>/<image>`` inside a zip; the archive is opened once per worker process."""

    def __init__(self, path: str, split: str, classes: list[str] | None = None, transform=None):
        self.path = path
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTENSIONS)]
        members: dict[str, list[str]] = {}
        for name in names:
            parts = name.split("/")
            # the split folder may sit under a top-level folder: find it as the third-to-last component
            if len(parts) >= 3 and parts[-3] == split:
                members.setdefault(parts[-2], []).append(name)
        if not members:
            raise ValueError(f"No images under a '{split}/<class>/' folder in {path}.")
        found = sorted(members)
        classes = classes or found
        index = {c: i for i, c in enumerate(classes)}
        self.members, labels = [], []
        for c in found:
            if c not in index:
                raise ValueError(f"Class folder {c!r} of split {split!r} in {path} is not among the training classes.")
            for name in sorted(members[c]):
                self.members.append(name)
                labels.append(index[c])
        self._zip: zipfile.ZipFile | None = None
        self._pid = None
        super().__init__(labels, classes, transform)

    def describe(self, index: int) -> str:
        return f"{self.members[index]} in {self.path}"

    def load(self, index: int) -> Image.Image:
        if self._zip is None or self._pid != os.getpid():  # a forked worker must not share the parent's handle
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        with Image.open(io.BytesIO(self._zip.read(self.members[index]))) as im:
            return im.convert("RGB")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None
        return state


class HFImages(ImageListDataset):
    """A split of a `datasets` dataset with an image column and an integer label column."""

    def __init__(self, ds, image_column: str, label_column: str, transform=None):
        for column in (image_column, label_column):
            if column not in ds.column_names:
                raise ValueError(f"Dataset has no column {column!r} (columns: {ds.column_names}); set --image_column/--label_column.")
        feature = ds.features[label_column]
        classes = list(getattr(feature, "names", None) or [str(i) for i in range(int(max(ds[label_column])) + 1)])
        self.ds, self.image_column = ds, image_column
        super().__init__([int(x) for x in ds[label_column]], classes, transform)

    def describe(self, index: int) -> str:
        return f"row {index} of the dataset's {self.image_column!r} column"

    def load(self, index: int) -> Image.Image:
        image = self.ds[index][self.image_column]
        if not isinstance(image, Image.Image):
            image = Image.open(io.BytesIO(image["bytes"])) if isinstance(image, dict) else Image.fromarray(image)
        return image.convert("RGB")


def _pick_eval_split(available: Sequence[str], eval_split: str | None, source: str) -> str:
    if eval_split is not None:
        if eval_split not in available:
            raise ValueError(f"Evaluation split {eval_split!r} not found in {source} (found: {sorted(available)}).")
        return eval_split
    for name in EVAL_SPLITS:
        if name in available:
            return name
    raise ValueError(f"{source} has no evaluation split: expected one of {EVAL_SPLITS} (or pass --eval_split).")


def build_datasets(data: str, train_split: str = "train", eval_split: str | None = None, image_column: str = "image",
                   label_column: str = "label") -> tuple[ImageListDataset, ImageListDataset]:
    """The training and evaluation datasets (without transforms) for ``data``."""
    if not data:
        raise ValueError("No data given: pass --data DIR (ImageFolder layout), --data FILE.zip, or a dataset name.")
    if os.path.isdir(data) and os.path.isfile(os.path.join(data, "dataset_dict.json")):
        import datasets

        dsd = datasets.load_from_disk(data)
        split = _pick_eval_split(list(dsd.keys()), eval_split, data)
        if train_split not in dsd:
            raise ValueError(f"Training split {train_split!r} not in {data} (found {list(dsd.keys())}).")
        return HFImages(dsd[train_split], image_column, label_column), HFImages(dsd[split], image_column, label_column)
    if os.path.isdir(data):
        subdirs = [d.name for d in os.scandir(data) if d.is_dir()]
        if train_split not in subdirs:
            raise ValueError(
                f"{data} has no '{train_split}' folder. Expected the ImageNet layout: {data}/train/<class>/<image> "
                f"and {data}/val/<class>/<image>."
            )
        split = _pick_eval_split(subdirs, eval_split, data)
        train = FolderImages(os.path.join(data, train_split))
        return train, FolderImages(os.path.join(data, split), train.classes)
    if os.path.isfile(data):
        if not zipfile.is_zipfile(data):
            raise ValueError(f"{data} is a file but not a zip archive; pass an ImageFolder directory, a .zip or a dataset name.")
        with zipfile.ZipFile(data) as zf:
            splits = {n.split("/")[-3] for n in zf.namelist() if n.lower().endswith(IMAGE_EXTENSIONS) and n.count("/") >= 2}
        if train_split not in splits:
            raise ValueError(f"{data} has no '{train_split}/<class>/<image>' entries (splits found: {sorted(splits)}).")
        split = _pick_eval_split(sorted(splits), eval_split, data)
        train = ZipImages(data, train_split)
        return train, ZipImages(data, split, train.classes)
    if os.path.sep in data or data.startswith("."):
        raise FileNotFoundError(f"No such directory or file: {data}.")
    import datasets

    try:
        dsd = datasets.load_dataset(data)
    except Exception as e:  # no network, unknown name, gated data set
        raise ValueError(
            f"Could not load the dataset {data!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Without network, pass a local ImageFolder directory, a zip, or a `datasets.save_to_disk` directory."
        ) from e
    split = _pick_eval_split(list(dsd.keys()), eval_split, data)
    return HFImages(dsd[train_split], image_column, label_column), HFImages(dsd[split], image_column, label_column)


def check_first_image(ds: ImageListDataset) -> None:
    """Reads one image so that an unreadable data set fails before the model is built, with a clear error."""
    if len(ds):
        ds.load_checked(0)


def subset(ds: ImageListDataset, n: int | None, seed: int):
    """A seeded random subset of ``n`` items (the whole dataset if ``n`` is None or too large)."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"Subset size must be positive, got {n}.")
    indices = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    small = type(ds).__new__(type(ds))
    small.__dict__.update(ds.__dict__)
    small.labels = [ds.labels[i] for i in indices]
    for attr in ("paths", "members"):
        if hasattr(ds, attr):
            setattr(small, attr, [getattr(ds, attr)[i] for i in indices])
    if hasattr(ds, "ds"):
        small.ds = ds.ds.select(indices)
    small._cache = None
    return small


def progressive_size(epoch: int, start: int, end: int, start_epoch: float, end_epoch: float, multiple: int) -> int:
    """FFCV's progressive resizing: ``start`` until ``start_epoch``, linear up to ``end`` at ``end_epoch``,
    rounded to the nearest multiple of ``multiple``."""
    if end_epoch <= start_epoch:
        size = start if epoch < start_epoch else end
    else:
        progress = min(max((epoch - start_epoch) / (end_epoch - start_epoch), 0.0), 1.0)
        size = start + (end - start) * progress
    return max(multiple, int(round(size / multiple)) * multiple) if multiple > 1 else int(round(size))


def timm_transforms(model, train_size: int, eval_size: int, eval_resize: int, crop_scale_min: float, hflip: float):
    """Train and eval transforms as timm builds them, with the model's mean/std and our sizes."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    common = dict(mean=cfg["mean"], std=cfg["std"], interpolation=cfg.get("interpolation", "bilinear"))
    train = create_transform(train_size, is_training=True, scale=(crop_scale_min, 1.0), hflip=hflip, **common)
    evaluate = create_transform(eval_size, is_training=False, crop_pct=eval_size / eval_resize, **common)
    return train, evaluate
