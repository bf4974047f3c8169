"""Mean pooling (``--pooling mean``): the classifier reads the mean of the real tokens' states, and a model trained
that way never loads silently as a CLS-pooling model."""

import contextlib
import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertModel, DistilBertConfig

from sparse_transfer.glue.__main__ import main
from sparse_transfer.hf.pooling import (
    MEAN_POOLING_MODEL_TYPE,
    MeanPoolingBertConfig,
    MeanPoolingBertForSequenceClassification,
    mean_pooling_config,
)

from .test_cli import fast_args, pruned_positions


def tiny_config(**kw) -> MeanPoolingBertConfig:
    return mean_pooling_config(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=32, **kw))


@torch.no_grad()
def test_the_classifier_reads_the_mean_of_the_real_tokens():
    torch.manual_seed(0)
    model = MeanPoolingBertForSequenceClassification(tiny_config(num_labels=3)).eval()
    ids = torch.randint(5, 40, (1, 6))
    alone = model(input_ids=ids).logits
    # The same example padded with other tokens: the padding is not part of the mean.
    padded = torch.cat([ids, torch.randint(5, 40, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    assert torch.allclose(model(input_ids=padded, attention_mask=mask).logits, alone, atol=1e-5)

    # The head is BERT's pooler (dense + tanh) and classifier on the mean, not on the first token.
    states = BertModel.forward(model.bert, ids).last_hidden_state
    expected = model.classifier(torch.tanh(model.bert.pooler.dense(states.mean(1))))
    assert torch.allclose(alone, expected, atol=1e-6)
    first_token = model.classifier(model.bert.pooler(states))
    assert not torch.allclose(alone, first_token, atol=1e-3)


def test_losses_follow_the_problem_type():
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (4, 5))
    classify = MeanPoolingBertForSequenceClassification(tiny_config(num_labels=2))
    out = classify(input_ids=ids, labels=torch.tensor([0, 1, 1, 0]))
    assert out.loss.ndim == 0 and torch.isclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 1, 0])))
    out.loss.backward()
    assert classify.bert.pooler.dense.weight.grad.abs().sum() > 0  # the pooler trains through the mean
    regress = MeanPoolingBertForSequenceClassification(tiny_config(num_labels=1))
    target = torch.rand(4)
    out = regress(input_ids=ids, labels=target)
    assert torch.isclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), target))


def test_tuples_and_gradient_accumulation_behave_like_bert(tmp_path):
    from sparse_transfer.hf import SparseTrainer, SparseTrainingArguments

    torch.manual_seed(0)
    # no dropout: the two layouts then compute the same losses
    model = MeanPoolingBertForSequenceClassification(tiny_config(num_labels=2, hidden_dropout_prob=0.0,
                                                                 attention_probs_dropout_prob=0.0))
    ids, labels = torch.randint(5, 40, (8, 5)), torch.randint(0, 2, (8,))
    loss, logits = model(input_ids=ids, labels=labels, return_dict=False)
    assert loss.ndim == 0 and logits.shape == (8, 2)

    # The loss is a per-micro-batch mean: with accumulation the Trainer must divide, so the logged loss is the same.
    data = [{"input_ids": ids[i], "labels": labels[i]} for i in range(8)]
    losses = []
    for accumulation in (1, 4):
        args = SparseTrainingArguments(output_dir=str(tmp_path / str(accumulation)), per_device_train_batch_size=8 // accumulation,
                                       gradient_accumulation_steps=accumulation, learning_rate=0.0, max_steps=1,
                                       report_to=[], save_strategy="no", use_cpu=True, mask_targets="bert")
        trainer = SparseTrainer(model=model, args=args, train_dataset=data)
        assert trainer.model_accepts_loss_kwargs is False
        losses.append(trainer.train().training_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_only_bert_family_configs_convert():
    with pytest.raises(ValueError, match="BERT-family models .* 'distilbert'.*--pooling cls"):
        mean_pooling_config(DistilBertConfig())
    converted = tiny_config()
    assert mean_pooling_config(converted) is converted and converted.model_type == MEAN_POOLING_MODEL_TYPE


def test_saved_model_loads_back_and_plain_transformers_refuses_it(tmp_path):
    torch.manual_seed(0)
    model = MeanPoolingBertForSequenceClassification(tiny_config(num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == MEAN_POOLING_MODEL_TYPE
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is MeanPoolingBertForSequenceClassification
    ids = torch.randint(5, 40, (2, 5))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # Without sparse_transfer, transformers must not read it through the CLS pooler: it refuses the model type.
    code = ("import sys; from transformers import AutoModelForSequenceClassification as A\n"
            f"try: A.from_pretrained({str(tmp_path)!r})\nexcept (ValueError, KeyError) as e: print('refused', e); sys.exit(0)\n"
            "sys.exit(1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and MEAN_POOLING_MODEL_TYPE in done.stdout, done.stdout + done.stderr


def test_glue_mean_pooling_end_to_end(tiny_model_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "sst2"
    assert main(["--task", "sst2", "--pooling", "mean", "--epochs", "3", *fast_args(tiny_model_dir, glue_dir, out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["pooling"] == "mean" and results["sparsity"]["exact"] is True
    best = out / "best"
    assert AutoConfig.from_pretrained(best).model_type == MEAN_POOLING_MODEL_TYPE
    after = load_file(str(best / "model.safetensors"))
    for name, mask in pruned_positions(tiny_model_dir).items():
        assert (after[f"bert.{name.split('bert.', 1)[1]}"][mask] == 0).all(), name

    # The card's snippet registers the model type, then loads and runs the model.
    card = (best / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert snippet.startswith("import sparse_transfer.hf.pooling")
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    # recipe.yaml reproduces the run (the finished run is found again, not retrained).
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["pooling"] == "mean"
    assert main(["--recipe", str(out / "recipe.yaml"), "--output_dir", str(out), "--disable_tqdm", "true"]) == 0
    assert json.loads((out / "results.json").read_text())["best"] == results["best"]

    assert "pipeline_tag: text-classification" in card and "import sparse_transfer.hf.pooling" in card

    # Asking for the CLS head on a mean-pooling model is an error that names the fix; so is LoRA on it (the adapter
    # would load onto a CLS-pooling base).
    for flags, message in ((["--pooling", "cls"], "was fine-tuned with mean pooling"),
                           (["--lora-r", "4"], "Masked LoRA on a mean-pooling model is not supported")):
        capsys.readouterr()
        assert main(["--task", "sst2", *flags, *fast_args(best, glue_dir, tmp_path / "again")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "again").exists()


@pytest.mark.parametrize("flags,message", [
    (["--pooling", "mean", "--lora-r", "4"], "--pooling mean with --lora-r is not supported"),
    (["--pooling", "max"], "invalid choice: 'max'"),
])
def test_unsupported_pooling_is_refused(flags, message, tiny_model_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "max" in flags else contextlib.nullcontext():  # argparse exits on a bad choice
        assert main(["--task", "sst2", *flags, *fast_args(tiny_model_dir, glue_dir, out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_run_recorded_before_the_pooling_field_is_still_the_same_run():
    from sparse_transfer.glue.run import fingerprint

    old = {"task": "rte", "learning_rate": 1e-4}
    assert fingerprint(old) == fingerprint({**old, "pooling": None})
    assert fingerprint(old) != fingerprint({**old, "pooling": "mean"})
