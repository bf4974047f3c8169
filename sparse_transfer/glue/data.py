"""GLUE data from three sources, checked and brought to one shape: ``text_a`` [, ``text_b``], ``label``.

* the Hugging Face Hub (``nyu-mll/glue``, the default);
* ``--data_dir``: GLUE's own TSV files, as its download script lays them out (``RTE/train.tsv``,
  ``RTE/dev.tsv``, ``MNLI/dev_matched.tsv``...), read with ``csv.QUOTE_NONE`` because GLUE's files quote
  nothing (a ``"`` inside a sentence is text, not a quote);
* ``--train_file``/``--validation_file``: csv or json files with the task's Hub column names, as in
  transformers' ``run_glue.py``.

Every label is checked against the task's label set (class names or ids; STS-B scores in [0, 5]) and every
problem is reported as a :class:`GlueDataError` naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .tasks import STSB_RANGE, GlueTask

TEXT_A, TEXT_B, LABEL = "text_a", "text_b", "label"
HUB_DATASET = "nyu-mll/glue"


class GlueDataError(ValueError):
    """Bad GLUE input data: the message names the file, the problem and what to pass instead."""


@dataclass
class GlueData:
    """A task's training set and its evaluation set(s), as ``datasets.Dataset`` with ``text_a[, text_b], label``.

    Attributes:
        task: The task.
        train: Training examples.
        evals: Evaluation set name -> examples (``validation``; MNLI: ``matched`` and ``mismatched``).
        source: Where the data came from, for ``results.json``.
    """

    task: GlueTask
    train: object
    evals: dict[str, object]
    source: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- labels
def parse_label(value, task: GlueTask, where: str) -> int | float:
    """One label as the model's target: a class id, or an STS-B score.

    Class labels may be written as the class name (``entailment``) or the class id (``0``, ``1``).

    Raises:
        GlueDataError: if the value is not in the task's label set.
    """
    text = str(value).strip()
    if task.is_regression:
        try:
            score = float(text)
        except ValueError:
            score = math.nan
        low, high = STSB_RANGE
        if not low <= score <= high:  # also rejects nan
            raise GlueDataError(f"{where}: label {text!r} is not an {task.name} score in [{low:g}, {high:g}].")
        return score
    if text in task.label_names:
        return task.label_names.index(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if number.is_integer() and 0 <= number < task.num_labels:
        return int(number)
    allowed = ", ".join(f"{i} ({name})" for i, name in enumerate(task.label_names))
    raise GlueDataError(f"{where}: label {text!r} is not in the {task.name} label set: {allowed}.")


# ------------------------------------------------------------------------------------------ GLUE TSV
def _raise_csv_limit() -> None:
    # GLUE rows are short, but QNLI/MNLI parses can pass csv's 128 KiB default on other data dumps.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def read_glue_tsv(path: str | os.PathLike, task: GlueTask) -> dict[str, list]:
    """Reads one of GLUE's TSV files for ``task``.

    Args:
        path: ``train.tsv``, ``dev.tsv``, ``dev_matched.tsv``...
        task: Its task; gives the layout (header or not, which columns hold the texts and the label).

    Returns:
        ``{"text_a": [...], ["text_b": [...],] "label": [...]}``.

    Raises:
        GlueDataError: empty file, missing column, short row, or a label outside the task's label set.
    """
    layout = task.tsv
    path = Path(path)
    _raise_csv_limit()
    columns: dict[str, list] = {TEXT_A: [], TEXT_B: [], LABEL: []}
    if len(layout.text_columns) == 1:
        del columns[TEXT_B]
    # utf-8-sig: MRPC's files start with a byte order mark ("\ufeffQuality").
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first_line = 1
        if layout.header:
            header = next(rows, None)
            if header is None:
                raise GlueDataError(f"{path} is empty: a GLUE {layout.directory} file starts with a header row.")
            header = [name.strip().lstrip("\ufeff") for name in header]
            positions = []
            for name in (*layout.text_columns, layout.label_column):
                if name not in header:
                    raise GlueDataError(
                        f"{path}: missing column {name!r} (header: {header}). GLUE's {layout.directory} files have "
                        f"the columns {list(layout.text_columns) + [layout.label_column]} among others; pass the files "
                        "as GLUE's download script writes them, or use --train_file/--validation_file."
                    )
                positions.append(header.index(name))
            needed = max(positions) + 1
            first_line = 2
        else:
            positions = [*layout.text_columns, layout.label_column]
            needed = layout.num_columns
        *text_positions, label_position = positions
        for line, row in enumerate(rows, start=first_line):
            if not row:
                continue  # a blank line (e.g. a trailing one) holds no example
            if len(row) < needed:
                missing = [
                    str(name) for name, pos in zip((*layout.text_columns, layout.label_column), positions) if pos >= len(row)
                ]
                raise GlueDataError(
                    f"{path}, line {line}: {len(row)} tab-separated fields, expected {needed}"
                    + (" (no header row; columns: source, label, original label, sentence)" if not layout.header else "")
                    + f"; missing column(s) {missing}."
                )
            where = f"{path}, line {line}"
            columns[TEXT_A].append(row[text_positions[0]])
            if TEXT_B in columns:
                columns[TEXT_B].append(row[text_positions[1]])
            columns[LABEL].append(parse_label(row[label_position], task, where))
    if not columns[LABEL]:
        raise GlueDataError(f"{path} holds no examples (only a header or nothing at all).")
    return columns


def find_task_dir(data_dir: str | os.PathLike, task: GlueTask) -> Path:
    """The folder with ``train.tsv`` for ``task``: ``DATA_DIR/<RTE|CoLA|...>`` or ``DATA_DIR`` itself.

    The task folder is matched case-insensitively and without dashes (``rte``, ``SST-2``, ``sst2``).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise GlueDataError(f"--data_dir {root} is not a directory.")
    wanted = {task.tsv.directory.lower(), task.name}
    candidates = [root / task.tsv.directory]
    candidates += [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower().replace("-", "") in wanted]
    candidates.append(root)
    for candidate in candidates:
        if (candidate / "train.tsv").is_file():
            return candidate
    raise GlueDataError(
        f"No {task.tsv.directory}/train.tsv under {root}. --data_dir takes GLUE's folder as its download script "
        f"writes it ({root}/{task.tsv.directory}/train.tsv, {root}/{task.tsv.directory}/"
        f"{task.tsv.dev_files[0][1]}), or the task folder itself."
    )


def load_glue_tsv(data_dir: str | os.PathLike, task: GlueTask) -> tuple[dict[str, list], dict[str, dict[str, list]], Path]:
    """Reads a task's training and dev files from GLUE's layout."""
    folder = find_task_dir(data_dir, task)
    train = read_glue_tsv(folder / "train.tsv", task)
    evals = {}
    for name, filename in task.tsv.dev_files:
        path = folder / filename
        if not path.is_file():
            raise GlueDataError(f"{folder} has train.tsv but no {filename}: GLUE's {task.tsv.directory} dev file is missing.")
        evals[name] = read_glue_tsv(path, task)
    return train, evals, folder


# ----------------------------------------------------------------------------------- csv / json files
def _file_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".json", ".jsonl"):
        return "json"
    raise GlueDataError(f"{path}: use a .csv or .json/.jsonl file (the format is taken from the extension).")


def read_data_file(path: str | os.PathLike, task: GlueTask) -> dict[str, list]:
    """Reads a csv/json file with the task's Hub column names (e.g. ``sentence1, sentence2, label`` for RTE).

    Labels may be class ids or class names.
    """
    import datasets

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GlueDataError(f"No such file: {path}.")
    if os.path.getsize(path) == 0:
        raise GlueDataError(f"{path} is empty.")
    fmt = _file_format(path)
    kwargs = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
    try:
        ds = datasets.load_dataset(fmt, data_files={"data": path}, split="data", **kwargs)
    except Exception as err:  # pandas/pyarrow parse errors come in many types; all mean the same to the user
        raise GlueDataError(f"{path} could not be read as {fmt} ({type(err).__name__}: {str(err).splitlines()[0][:200]}).") from None
    needed = [*task.text_columns, LABEL]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise GlueDataError(
            f"{path}: missing column(s) {missing} (found {ds.column_names}). For {task.name} the file needs the "
            f"columns {needed}, as in nyu-mll/glue."
        )
    if len(ds) == 0:
        raise GlueDataError(f"{path} holds no examples.")
    columns: dict[str, list] = {TEXT_A: [str(t) for t in ds[task.text_columns[0]]]}
    if len(task.text_columns) == 2:
        columns[TEXT_B] = [str(t) for t in ds[task.text_columns[1]]]
    columns[LABEL] = [parse_label(v, task, f"{path}, example {i}") for i, v in enumerate(ds[LABEL])]
    return columns


# ------------------------------------------------------------------------------------------------ Hub
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None if it may be.

    huggingface_hub retries a failing request for about 25 s per file before giving up; this probe (one TCP
    connection) lets an offline user get the message at once. It stays out of the way when offline mode is
    on (the Hugging Face cache answers then) or a proxy is configured (a direct connection proves nothing).
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return None
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}:{port} is unreachable ({type(err).__name__}: {err})"
    return None


def load_glue_hub(task: GlueTask, dataset: str = HUB_DATASET, revision: str | None = None):
    """Loads ``task`` from the Hub; a failure (offline, unknown dataset) says what to pass instead."""
    import datasets

    def failure(reason: str) -> GlueDataError:
        return GlueDataError(
            f"Could not load GLUE task {task.name!r} from the Hugging Face Hub ({dataset}: {reason}). "
            f"Without network, pass --data_dir DIR with GLUE's TSV files (DIR/{task.tsv.directory}/train.tsv and "
            f"DIR/{task.tsv.directory}/{task.tsv.dev_files[0][1]}), or --train_file and --validation_file (csv/json "
            f"with the columns {[*task.text_columns, LABEL]}); or set HF_HUB_OFFLINE=1 to use a copy in the Hugging "
            "Face cache."
        )

    reason = hub_unreachable()
    if reason is not None:
        raise failure(reason)
    try:
        dd = datasets.load_dataset(dataset, task.name, revision=revision)
    except Exception as err:  # offline, DNS, missing repo: all end the same way for the user
        first = (str(err).strip().splitlines() or ["no details"])[0][:200]
        raise failure(f"{type(err).__name__}: {first}") from None

    def convert(split: str) -> dict[str, list]:
        if split not in dd:
            raise GlueDataError(f"{dataset}/{task.name} has no split {split!r} (it has {list(dd)}).")
        ds = dd[split]
        missing = [c for c in (*task.text_columns, LABEL) if c not in ds.column_names]
        if missing:
            raise GlueDataError(f"{dataset}/{task.name} split {split!r}: missing column(s) {missing} (found {ds.column_names}).")
        columns = {TEXT_A: list(ds[task.text_columns[0]])}
        if len(task.text_columns) == 2:
            columns[TEXT_B] = list(ds[task.text_columns[1]])
        columns[LABEL] = [parse_label(v, task, f"{dataset}/{task.name} {split} example {i}") for i, v in enumerate(ds[LABEL])]
        return columns

    return convert("train"), {name: convert(split) for name, split in task.eval_splits}


# ------------------------------------------------------------------------------------------- together
def load_glue_data(
    task: GlueTask,
    data_dir: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    validation_mismatched_file: str | None = None,
    dataset: str = HUB_DATASET,
    dataset_revision: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> GlueData:
    """Loads and checks a task's data from the Hub, GLUE's TSV files, or csv/json files.

    Args:
        task: The task.
        data_dir: GLUE's folder (``DIR/RTE/train.tsv``...) or the task folder.
        train_file, validation_file: csv/json files (both needed; they take precedence over ``data_dir``).
        validation_mismatched_file: MNLI's mismatched dev set as a csv/json file (optional).
        dataset, dataset_revision: The Hub dataset, when no local data is given.
        max_train_samples, max_eval_samples: Keep a random subset (drawn with ``seed``) of this many examples.
        seed: Seed of the subsets.

    Returns:
        :class:`GlueData` with ``datasets.Dataset`` splits.
    """
    import datasets

    if (train_file is None) != (validation_file is None):
        raise GlueDataError("Pass both --train_file and --validation_file (or neither, to use --data_dir or the Hub).")
    if validation_mismatched_file is not None and (train_file is None or task.name != "mnli"):
        raise GlueDataError("--validation_mismatched_file is only for --task mnli together with --train_file/--validation_file.")
    if train_file is not None:
        train = read_data_file(train_file, task)
        evals = {task.eval_names[0]: read_data_file(validation_file, task)}
        if validation_mismatched_file is not None:
            evals["mismatched"] = read_data_file(validation_mismatched_file, task)
        source = {"train_file": os.path.abspath(train_file), "validation_file": os.path.abspath(validation_file)}
    elif data_dir is not None:
        train, evals, folder = load_glue_tsv(data_dir, task)
        source = {"data_dir": str(folder.resolve())}
    else:
        train, evals = load_glue_hub(task, dataset, dataset_revision)
        source = {"dataset": dataset, "config": task.name, "revision": dataset_revision}

    for name, limit in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if limit is not None and limit <= 0:
            raise GlueDataError(f"--{name} must be a positive number of examples, got {limit}.")
    features = datasets.Features(
        {
            TEXT_A: datasets.Value("string"),
            **({TEXT_B: datasets.Value("string")} if TEXT_B in train else {}),
            LABEL: datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names)),
        }
    )

    def to_dataset(columns: dict[str, list], limit: int | None):
        ds = datasets.Dataset.from_dict(columns, features=features)
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=seed).select(range(limit))  # a random subset, not the first rows of a sorted file
        return ds

    data = GlueData(
        task=task,
        train=to_dataset(train, max_train_samples),
        evals={name: to_dataset(columns, max_eval_samples) for name, columns in evals.items()},
        source=source,
    )
    data.source.update(
        {"train_examples": len(data.train), "eval_examples": {name: len(ds) for name, ds in data.evals.items()}}
    )
    return data


def tokenize_glue(data: GlueData, tokenizer, max_seq_length: int = 128, pad_to_max_length: bool = False) -> GlueData:
    """Tokenizes every split (pairs as pairs), truncating to ``max_seq_length``; keeps ``label``."""

    def tokenize(batch):
        texts = (batch[TEXT_A], batch[TEXT_B]) if TEXT_B in batch else (batch[TEXT_A],)
        return tokenizer(
            *texts, truncation=True, max_length=max_seq_length, padding="max_length" if pad_to_max_length else False
        )

    def run(ds, name: str):
        text_columns = [c for c in (TEXT_A, TEXT_B) if c in ds.column_names]
        return ds.map(tokenize, batched=True, remove_columns=text_columns, desc=f"Tokenizing {name}")

    return GlueData(
        task=data.task,
        train=run(data.train, "train"),
        evals={name: run(ds, name) for name, ds in data.evals.items()},
        source=data.source,
    )
