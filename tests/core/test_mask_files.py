"""Mask files that cannot lie: every way a file can be wrong is refused with a message naming the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from sparse_transfer.core import SparseMasks
from sparse_transfer.core.masks import MASKS_FILE_VERSION, pack_bits


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))


@pytest.fixture
def saved(tmp_path):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.6)
    masks.apply_()
    path = tmp_path / "sparse_masks.safetensors"
    masks.save(path)
    return model, masks, path


def rewrite(path, tensors=None, **metadata_changes):
    """Rewrites a mask file with other tensors and/or metadata (``None`` deletes a key), as a tamperer would."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    data = load_file(str(path)) if tensors is None else tensors
    for key, value in metadata_changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    save_file(data, str(path), metadata=metadata)


def test_a_saved_file_round_trips_with_checksum_and_model_fingerprint(saved):
    model, masks, path = saved
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["version"] == MASKS_FILE_VERSION and len(metadata["checksum"]) == 64 and metadata["model_fingerprint"]
    loaded = SparseMasks.load(path, model)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_a_flipped_byte_is_refused(saved):
    _, _, path = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the packed bits
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its checksum"):
        SparseMasks.load(path)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_bits_stored_in_another_dtype_are_refused(saved, dtype):
    _, masks, path = saved
    rewrite(path, {n: m.reshape(-1).to(dtype) for n, m in masks.items()})  # unpacked, as bool or float
    with pytest.raises(ValueError, match="masks are packed bits, one uint8 vector per parameter"):
        SparseMasks.load(path)


def test_bits_of_the_wrong_length_are_refused(saved):
    _, masks, path = saved
    rewrite(path, {n: pack_bits(m)[:-1].contiguous() for n, m in masks.items()})
    with pytest.raises(ValueError, match="bytes for 0.weight"):
        SparseMasks.load(path)


def test_lying_metadata_is_refused(saved):
    _, masks, path = saved
    rewrite(path, sparsity="0.990000", checksum=None, model_fingerprint=None, version="1")  # an old-format file that lies
    with pytest.raises(ValueError, match="says its sparsity is 0.990000 but its bits hold"):
        SparseMasks.load(path)


def test_edited_shapes_are_refused(saved):
    _, masks, path = saved
    shapes = {n: list(m.shape) for n, m in masks.items()}
    shapes["0.weight"] = [10, 20]
    rewrite(path, shapes=json.dumps(shapes))
    with pytest.raises(ValueError, match="fingerprint that does not match its own shapes|fails its checksum"):
        SparseMasks.load(path)


def test_missing_or_extra_keys_are_refused(saved):
    _, masks, path = saved
    packed = {n: pack_bits(m) for n, m in masks.items()}
    del packed["2.weight"]
    rewrite(path, packed)
    with pytest.raises(ValueError, match=r"lists masks its data lacks \(\['2.weight'\]\)"):
        SparseMasks.load(path)


def test_an_unknown_version_is_refused(saved):
    _, _, path = saved
    rewrite(path, version="99")
    with pytest.raises(ValueError, match="format version '99'"):
        SparseMasks.load(path)


def test_a_truncated_file_is_refused(saved):
    _, _, path = saved
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="damaged|truncated"):
        SparseMasks.load(path)


def test_the_mask_file_of_another_model_of_the_same_architecture_is_refused(saved, tmp_path):
    _, _, path = saved
    other = mlp(seed=1)
    SparseMasks.from_magnitude(other, 0.6).apply_()
    with pytest.raises(ValueError, match="saved beside other weights .* same architecture"):
        SparseMasks.load(path, other)
    SparseMasks.load(path).bind(other)  # on purpose: allowed


def test_version_1_files_still_load_with_a_warning(saved, caplog):
    model, masks, path = saved
    rewrite(path, version="1", checksum=None, model_fingerprint=None)
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        loaded = SparseMasks.load(path, model)
    assert "no checksum" in caplog.text and all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_a_version_edited_down_to_1_is_refused(saved):
    _, _, path = saved
    rewrite(path, version="1")  # one byte: would turn the checksum off
    with pytest.raises(ValueError, match="says it is version 1 but carries version-2 fields"):
        SparseMasks.load(path)


@pytest.mark.parametrize("change", [dict(model_fingerprint=None), dict(model_fingerprint="0" * 16), dict(sparsity="nan")])
def test_every_metadata_field_is_under_the_checksum(saved, change):
    _, _, path = saved
    rewrite(path, **change)
    with pytest.raises(ValueError, match="fails its checksum"):
        SparseMasks.load(path)


@pytest.mark.parametrize("shapes", ['{"0.weight": ["20", 10], "2.weight": [2, 20]}', '{"0.weight": [0, 10], "2.weight": [2, 20]}'])
def test_malformed_shapes_are_a_clear_error(saved, shapes):
    _, _, path = saved
    rewrite(path, shapes=shapes)
    with pytest.raises(ValueError, match="is not a non-empty tensor shape"):
        SparseMasks.load(path)
