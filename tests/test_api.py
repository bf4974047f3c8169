import subprocess
import sys

import sparse_transfer


def test_every_public_name_resolves():
    for name in sparse_transfer.__all__:
        assert getattr(sparse_transfer, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    try:
        sparse_transfer.NotAThing  # noqa: B018
    except AttributeError as e:
        assert "NotAThing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_mask_engine_import_does_not_import_transformers():
    code = "import sys, sparse_transfer; sparse_transfer.SparseMasks; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
