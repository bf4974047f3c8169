"""Which weights a run starts from: ``start_identity`` reads content, not the bytes a library happened to write."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from sparse_transfer._rundir import same_start, start_identity, starts_match


def _reorder_metadata(path):
    """Rewrites a safetensors file's header with its ``__metadata__`` in reverse order, as another process's save of
    the same tensors and metadata may list it (the library iterates a Rust HashMap); same length, same data."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size], object_pairs_hook=dict)
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= size
    path.write_bytes(raw[:8] + text.ljust(size) + raw[8 + size:])


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    save_file({"w": torch.arange(12.0).reshape(3, 4)}, str(model / "model.safetensors"), metadata={"format": "pt"})
    save_file({"w": torch.ones(3, 4, dtype=torch.uint8)}, str(model / "sparse_masks.safetensors"),
              metadata={"format": "sparse_transfer.masks", "version": "2", "sparsity": "0.000000", "a": "1"})
    return model


def test_the_same_tensors_saved_with_metadata_in_another_order_are_the_same_start(folder):
    before = start_identity(folder)
    assert before["files"] == ["config.json", "model.safetensors", "sparse_masks.safetensors"]
    _reorder_metadata(folder / "sparse_masks.safetensors")
    after = start_identity(folder)
    assert after["sha256"] != before["sha256"]  # the bytes differ ...
    assert after["content_sha256"] == before["content_sha256"]  # ... the weights do not
    assert starts_match(before, after)
    same_start(before, after, "RUN", str(folder))  # no error


def test_one_changed_weight_or_metadata_value_is_another_start(folder):
    before = start_identity(folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 1  # one bit of the last weight
    (folder / "model.safetensors").write_bytes(bytes(raw))
    changed = start_identity(folder)
    assert changed["content_sha256"] != before["content_sha256"] and not starts_match(before, changed)
    with pytest.raises(ValueError, match=r"other weights than .* \(recorded content_sha256 "):
        same_start(before, changed, "RUN", str(folder))

    save_file({"w": torch.ones(3, 4, dtype=torch.uint8)}, str(folder / "sparse_masks.safetensors"),
              metadata={"format": "sparse_transfer.masks", "version": "2", "sparsity": "0.000000", "a": "2"})
    assert start_identity(folder)["content_sha256"] != changed["content_sha256"]


def test_a_record_from_before_content_hashing_is_compared_byte_for_byte(folder):
    current = start_identity(folder)
    legacy = {"sha256": current["sha256"], "files": current["files"]}
    assert starts_match(legacy, current)
    _reorder_metadata(folder / "sparse_masks.safetensors")
    # The old record holds bytes only: which of the orders it was cannot be told from it, so it is refused.
    assert not starts_match(legacy, start_identity(folder))
    assert not starts_match(None, current) and not starts_match({}, current)
    assert starts_match({"commit": "a" * 40}, {"commit": "a" * 40})
    assert not starts_match({"commit": "a" * 40}, current)


def test_a_damaged_safetensors_header_is_hashed_as_bytes(folder):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    for damaged in (raw[:5], b"\xff" * 8 + raw[8:], raw[:8] + b"{not json" + raw[17:]):
        path.write_bytes(damaged)
        identity = start_identity(folder)  # no exception: a load of this folder is what reports the damage
        assert identity["content_sha256"] and identity["sha256"]
    path.write_bytes(raw[:8] + b"{not json" + raw[17:])
    first = start_identity(folder)
    path.write_bytes(raw[:8] + b"{not jsoN" + raw[17:])
    assert start_identity(folder)["content_sha256"] != first["content_sha256"]


def test_a_header_nested_past_the_json_parser_is_hashed_as_bytes(folder):
    path = folder / "model.safetensors"
    header = b"[" * 200_000 + b"]" * 200_000
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert start_identity(folder)["content_sha256"]


def test_a_byte_level_record_that_differs_says_why_it_may(folder):
    current = start_identity(folder)
    with pytest.raises(ValueError, match="holds the files' bytes only"):
        same_start({"sha256": "0" * 64}, current, "RUN", str(folder))
