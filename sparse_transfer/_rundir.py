"""The run folder that every command (glue, upstream, vision) shares.

A run folder holds, whatever the command:

- ``recipe.yaml``: every value the run used (the resolved recipe); ``python -m sparse_transfer.<command> --recipe
  RUN/recipe.yaml`` reruns it, and a rerun into the same folder with another recipe is refused (``--overwrite``
  starts over);
- ``results.json``: written last and atomically, so its presence means "finished"; with the library versions and,
  for a run that starts from a pretrained model, which weights it started from (``start_identity``: a finished run
  or a checkpoint is reused only when they are still the same weights, not merely the same path);
- the command's checkpoints, and one summary line printed at the end that points to ``results.json``.

The helpers here are the only place these files are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"
RESULTS_NAME = "results.json"
# Which weights a run started from (``start_identity``), written with its recipe before it trains.
START_NAME = "start.json"
# The files of a local model folder that define its weights: the weights in any format transformers and timm read,
# the sparse masks file, and the config (the architecture they are read into). Not the README, tokenizer or
# training leftovers, so a model card edit does not make a finished run look stale.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
# Also hashed: a sharded checkpoint's index (which shard holds which tensor) and the modeling code of a
# trust_remote_code model. Not hashed: the Trainer's pickled arguments, a leftover of training.
_ALSO_HASHED = (".index.json", ".py")
_NOT_HASHED = {"training_args.bin"}
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")

# Spellings the commands no longer take, and the one that replaced each (one spelling per flag across commands).
RENAMED_FLAGS = {
    "--overwrite_output_dir": "--overwrite",
    "--overwrite-output-dir": "--overwrite",
    "--no_resume": "--overwrite",
    "--no-resume": "--overwrite",
    "--hub_model_id": "--push-to-hub USER/NAME",
    "--hub-model-id": "--push-to-hub USER/NAME",
    "--hub_private": "--hub-private-repo",
    "--hub-private": "--hub-private-repo",
}


def check_flags(argv: list[str], renamed: Mapping[str, str] = RENAMED_FLAGS) -> None:
    """Refuses a flag spelling that was replaced, naming the new one (argparse would only say "unrecognized")."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in renamed:
            raise ValueError(f"{name} is now {renamed[name]} (the same flag in every sparse_transfer command).")


def plain(value: Any) -> Any:
    """``value`` as YAML/JSON-safe builtins (dataclasses, paths, tuples, enum-like strings)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)  # str subclasses (enum-like scheduler names) would trip yaml.safe_dump
    return str(getattr(value, "value", value))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to a temporary file and renames it, so a reader sees the whole file or none (the temporary
    name is the process's own: two processes writing the same file, such as grid shards, never share it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``write_text_atomic`` of ``obj`` as JSON."""
    write_text_atomic(path, json.dumps(plain(obj), indent=2, allow_nan=True) + "\n")


#: Held (an OS file lock) while a process trains into a run folder.
RUN_LOCK_NAME = ".lock"


class RunDirInUse(ValueError):
    """Another process is training into the same run folder."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Holds ``RUN/.lock`` while this process trains into ``run_dir``: a second process (the same command started
    twice) gets a clear error (``RunDirInUse``; a grid shard catches it and leaves the point to that process) instead
    of two trainings overwriting each other's files. The lock is the operating system's (``filelock``, as
    huggingface_hub locks its cache), so a killed process never leaves it held; a folder this call created and
    nothing else wrote is removed again."""
    import shutil

    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / RUN_LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirInUse(
            f"Another process is training into {run_dir} (it holds {run_dir / RUN_LOCK_NAME}): two runs in one folder "
            "would overwrite each other. Wait for it to finish, or use another --output_dir (to share a grid between "
            "processes, start each with --grid_shard K/N: a shard leaves a point another process holds to it)."
        ) from None
    try:
        yield run_dir
    finally:
        # Removed while still held: released first, another process could lock the file and then lose its folder.
        if created and [p.name for p in run_dir.iterdir()] == [RUN_LOCK_NAME]:
            shutil.rmtree(run_dir, ignore_errors=True)
        lock.release()


def write_yaml_atomic(path: str | os.PathLike, obj: Any, header: str = "") -> None:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(header + yaml.safe_dump(plain(obj), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def read_yaml(path: str | os.PathLike) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def write_recipe(run_dir: str | os.PathLike, recipe: Mapping[str, Any], command: str) -> Path:
    """Writes ``RUN/recipe.yaml`` with a header saying how to rerun it."""
    path = Path(run_dir) / RECIPE_NAME
    header = f"# Resolved recipe of {run_dir}; rerun with: python -m sparse_transfer.{command} --recipe {path}\n"
    write_yaml_atomic(path, recipe, header=header)
    return path


def recipe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The fields whose values differ between two recipes (as written to YAML)."""
    old, new = plain(dict(old)), plain(dict(new))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def refuse_other_recipe(run_dir: str | os.PathLike, what: str, differing: list[str]) -> None:
    raise ValueError(
        f"{run_dir} holds {what} with a different recipe (differing fields: {differing[:8]}). Use another "
        "--output_dir, or pass --overwrite to start over there."
    )


def library_versions() -> dict[str, str]:
    """Versions of everything a run's numbers depend on."""
    import importlib.metadata

    from . import __version__

    versions = {"sparse_transfer": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "accelerate", "peft", "timm", "numpy", "scipy", "scikit-learn"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def summary_line(command: str, parts: list[str], results_path: str | os.PathLike) -> str:
    """The one line every command ends with: what it achieved, and where ``results.json`` is."""
    return f"{command}: {'; '.join(p for p in parts if p)}; results: {results_path}"


def _hash_file(file: Path, raw, content) -> None:
    """Feeds ``file`` to ``raw`` as bytes and to ``content`` as content: the same bytes, except that a safetensors
    header (``__metadata__`` and the tensors' dtypes, shapes and offsets) is hashed as canonical JSON. The
    safetensors library writes a header's metadata in the order a Rust ``HashMap`` iterates, which changes from
    process to process, so saving the same tensors and metadata twice (a mask file, say) gives files whose bytes
    differ; their content is the same. A header that does not parse is hashed as bytes (loading it fails anyway)."""
    with open(file, "rb") as f:
        if file.suffix == ".safetensors":
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = f.read(size) if 0 < size <= 100_000_000 else b""
            raw.update(head + header)
            try:
                canonical = json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
            except (ValueError, RecursionError):  # not JSON (nor UTF-8), or nested past the parser: a damaged file
                canonical = head + header
            content.update(canonical)
        for chunk in iter(lambda: f.read(1 << 22), b""):
            raw.update(chunk)
            content.update(chunk)


def starts_match(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether two ``start_identity`` records are the same weights: the same content (files whose bytes differ only
    in the order a safetensors header lists its metadata are the same weights), else, for a record written before
    content was recorded, the same bytes; for Hub ids, the same resolved commit."""
    if not recorded:
        return False
    for key in ("content_sha256", "sha256"):
        if key in recorded and key in current:
            return recorded[key] == current[key]
    return "commit" in recorded and "commit" in current and recorded["commit"] == current["commit"]


def start_identity(model: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """Which weights ``model`` is, beyond its name: a run is the same run again only if it starts from the same ones.

    A model retrained or replaced under the same path (or a Hub branch that moved) would otherwise let a resumed
    run or a grid mix results from two different starting points without a word. Returns, for a local folder, the
    SHA-256 of its weight, mask and config files, a sharded checkpoint's index and any modeling code, twice:
    ``sha256`` of their bytes and ``content_sha256`` of their content, which reads each safetensors header as data
    (``{"sha256": ..., "content_sha256": ..., "files": [...]}``; about a second per GB; ``starts_match`` compares
    two). For a single weights file (vision's ``--init_checkpoint``), of it and the mask file beside it; for a Hub
    id, the commit the revision resolves to (``{"commit": ...}``; ``None`` when neither the Hub nor the local cache
    can say).
    """
    path = Path(model)
    if path.is_dir() or path.is_file():
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name not in _NOT_HASHED and (
                p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json" or p.name.endswith(_ALSO_HASHED)))
        else:  # one weights file (vision's --init_checkpoint), and the mask file that may lie beside it
            from .core.masks import MASKS_NAME

            files = [path, *([path.parent / MASKS_NAME] if (path.parent / MASKS_NAME).is_file() else [])]
        raw, content = hashlib.sha256(), hashlib.sha256()
        for file in files:
            for digest in (raw, content):
                digest.update(file.name.encode() + b"\0")
            _hash_file(file, raw, content)
        return {"sha256": raw.hexdigest(), "content_sha256": content.hexdigest(), "files": [p.name for p in files]}
    if revision and _COMMIT_HASH.match(revision):
        return {"commit": revision}
    from transformers.utils.hub import resolve_revision

    for local_files_only in (False, True):  # the Hub, else the commit the cache recorded for this revision
        resolved = getattr(resolve_revision(str(model), revision, local_files_only=local_files_only), "resolved", None)
        if resolved:
            return {"commit": resolved}
    return {"commit": None}


def same_start(recorded: Mapping[str, Any] | None, current: Mapping[str, Any], where: str | os.PathLike, model: str,
               fix: str | None = None) -> None:
    """Raises unless ``recorded`` (the start identity stored with a run) is ``current``.

    Args:
        recorded: What the run folder recorded (``None``: it predates the record).
        current: ``start_identity`` of the model given now.
        where: The run folder (or file) holding the record, for the message.
        model: The model as given, for the message.
        fix: What to do about it (default: another ``--output_dir``, or ``--overwrite``).
    """
    fix = fix or (f"Use another --output_dir for runs from the current weights, or pass --overwrite to train again "
                  f"in {where}.")
    if recorded is None:
        raise ValueError(
            f"{where} was written before runs recorded which weights they start from, so whether {model} still holds "
            f"the same weights cannot be checked. {fix}"
        )
    key = "sha256" if "sha256" in current else "commit"
    if ("sha256" in recorded) != ("sha256" in current):  # a local folder then, a Hub id (or a missing path) now
        was, now = ("a local folder or file", "not one") if "sha256" in recorded else ("a Hub id", "a local path")
        raise ValueError(
            f"{where} started from {model} when it was {was}; now it is {now} (moved or deleted?), so whether it "
            f"holds the same weights cannot be checked. {fix}"
        )
    if not starts_match(recorded, current):
        shown = "content_sha256" if "content_sha256" in recorded and "content_sha256" in current else key
        bytes_only = (" That record holds the files' bytes only (written before runs recorded their content): the "
                      "same weights saved again, a mask file whose metadata the safetensors library wrote in another "
                      "order among them, differ from it too." if shown == "sha256" else "")
        raise ValueError(
            f"{where} started from other weights than {model} holds now (recorded {shown} "
            f"{str(recorded.get(shown))[:12]}, now {str(current.get(shown))[:12]}): the model was retrained, replaced "
            f"or moved on since.{bytes_only} {fix}"
        )
    if current.get(key) is None:
        logger.warning("Could not resolve which commit of %s this is (no Hub, no cached revision): %s is reused on "
                       "the model's name and revision alone.", model, where)
