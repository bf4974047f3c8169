"""Does a model folder hold the weights that a byte-level start record names, up to the order of safetensors metadata?

Runs recorded before 2026-12-01 (and ``benchmarks/results/*`` JSONs of that time) hold the SHA-256 of the start's
*bytes* (``sha256`` in ``start``). The safetensors library writes a file's ``__metadata__`` in the order a Rust HashMap
iterates, which changes from process to process, so a training that gives the same tensors again still writes a mask
file whose bytes differ. This tries every order of the metadata keys of the folder's one safetensors file that has
more than one (the mask file) and says which order, if any, gives the recorded SHA-256: a match means the folder holds
exactly the recorded weights (same tensors, same metadata), a miss that it holds other ones.

Usage::

    python benchmarks/match_start_record.py runs/upstream/bench/minilm_80_full ce2dc78ad6cb
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import struct
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparse_transfer._rundir import start_identity, write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "glue_study"


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def match(folder: Path, want: str) -> list[str] | None:
    """The metadata order (keys) whose bytes give a start record ``want`` (a prefix of its sha256), else None."""
    identity = start_identity(folder)
    if identity["sha256"].startswith(want):
        return []  # the bytes themselves
    headers = {}
    for name in identity["files"]:
        if name.endswith(".safetensors"):
            raw = (folder / name).read_bytes()
            size = struct.unpack("<Q", raw[:8])[0]
            pairs = json.loads(raw[8:8 + size], object_pairs_hook=list)
            meta = dict(pairs).get("__metadata__") or []
            if len(meta) > 1:
                headers[name] = (raw, size, pairs, meta)
    if not headers:  # nothing whose order could differ: the bytes alone decide, and they differ
        return None
    if len(headers) > 1:
        raise SystemExit(f"{folder}: {len(headers)} safetensors files with more than one metadata key; this tries the "
                         "orders of one")
    (permuted, (raw, size, pairs, meta)), = headers.items()
    tensors = ",".join(f"{_dumps(k)}:{_dumps(dict(v))}" for k, v in pairs if k != "__metadata__")

    def header(order) -> bytes:
        return ("{" + f'"__metadata__":{{{",".join(f"{_dumps(k)}:{_dumps(v)}" for k, v in order)}}},' + tensors
                + "}").encode().ljust(size)

    if header(meta) != raw[8:8 + size]:  # the library's own layout must come back, else the search proves nothing
        raise SystemExit(f"{folder / permuted}: its header is not laid out as the safetensors library writes it")
    before = hashlib.sha256()  # the files hashed before the permuted one (then it, then those after it)
    names = identity["files"]
    for name in names[:names.index(permuted)]:
        before.update(name.encode() + b"\0" + (folder / name).read_bytes())
    before.update(permuted.encode() + b"\0")
    tail = b"".join(name.encode() + b"\0" + (folder / name).read_bytes() for name in names[names.index(permuted) + 1:])
    data = raw[8 + size:]
    for order in itertools.permutations(meta):
        digest = before.copy()
        digest.update(raw[:8] + header(order) + data + tail)
        if digest.hexdigest().startswith(want):
            return [k for k, _ in order]
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("sha256", help="the recorded start's sha256 (or a prefix of it, 12+ hex digits)")
    parser.add_argument("--record", action="store_true", help="On a match, add the folder's content_sha256 to the "
                        "start of every glue_study arm (benchmarks/results/glue_study/*.json) that recorded that "
                        "sha256, so that glue_study adds arms from this folder under their start name.")
    args = parser.parse_args(argv)
    if len(args.sha256) < 12:
        parser.error("give at least 12 hex digits of the recorded sha256")
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a model folder")
    identity = start_identity(args.folder)
    order = match(args.folder, args.sha256.lower())
    print(f"{args.folder}: sha256 {identity['sha256'][:12]}, content_sha256 {identity['content_sha256'][:12]}")
    if order is None:
        print(f"no order of the metadata gives {args.sha256}: other weights")
        return 1
    print(f"the recorded {args.sha256} is these weights" + (f", saved with metadata order {order}" if order else ""))
    if args.record:
        for path in sorted(RESULTS.glob("*.json")):
            arm = json.loads(path.read_text())
            start = arm.get("start") or {}
            if str(start.get("sha256", "")).startswith(args.sha256.lower()) and "content_sha256" not in start:
                start["content_sha256"] = identity["content_sha256"]
                arm["start_note"] = "; ".join(filter(None, [arm.get("start_note"), f"content_sha256 added by `python benchmarks/match_start_record.py {args.folder} "
                                     f"{args.sha256} --record`: the folder, trained again, gave these bytes up to the "
                                     "order of its mask file's metadata"]))
                write_json_atomic(path, arm)
                print(f"recorded in {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
