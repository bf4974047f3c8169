"""``python -m sparse_transfer.demo`` (``make demo``): the whole product offline, end to end."""

import json

from sparse_transfer.demo import main


def test_the_demo_runs_offline_and_keeps_every_zero(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--output_dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "non-zero after training: 0; mask unchanged from the sparse model: True" in out
    assert "zeros intact" in out  # the inspect step
    results = json.loads((tmp_path / "demo" / "sst2" / "results.json").read_text())
    assert results["sparsity"]["exact"] is True and results["sparsity"]["mask_sparsity"] > 0.79
    assert results["best"]["accuracy"] > 0.75  # it learned: the words are words, the model was pretrained
    stages = {h["unfreeze_stage"] for h in json.loads((tmp_path / "demo" / "sst2" / "log_history.json").read_text())
              if "unfreeze_stage" in h}
    assert stages == set(range(6))  # 4 blocks: head, 4 block stages, everything
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
