"""The model card of a GLUE run: Hub metadata only where it is true, model-index, and a usage snippet that runs."""

import re

import yaml

from sparse_transfer.glue.__main__ import main

from .test_cli import fast_args


def test_card_metadata_model_index_and_a_snippet_that_runs(tiny_model_dir, glue_dir, tmp_path, fake_hub):
    out = tmp_path / "rte"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--push-to-hub", "me/tiny-rte"]) == 0
    text = (out / "best" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    # A local model and local data: neither is claimed as a Hub base model or dataset.
    assert "base_model" not in front and "datasets" not in front
    assert front["library_name"] == "transformers" and "sparse" in front["tags"]
    assert front["pipeline_tag"] == "text-classification"
    result = front["model-index"][0]["results"][0]
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"]["config"] == "rte" and result["dataset"]["split"] == "validation"
    assert result["dataset"]["args"]["num_examples"] == 24
    assert result["metrics"][0]["type"] == "accuracy"
    assert "from local files" in text
    # The usage snippet loads the task head from where the checkpoint is, and runs as written.
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "AutoModelForSequenceClassification" in snippet and str((out / "best").resolve()) in snippet
    exec(compile(snippet, "README.md", "exec"), {})
    # The pushed card loads from the repository instead.
    pushed = fake_hub[0][1]["README.md"].decode()
    assert 'from_pretrained("me/tiny-rte")' in pushed and str(out.resolve()) not in pushed
