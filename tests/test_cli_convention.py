"""One convention across glue, upstream and vision: the same flag spellings, a recipe.yaml that reruns the run, one
summary line pointing to results.json; replaced spellings are refused with the new one named."""

import pytest

from sparse_transfer.glue.__main__ import main as glue_main
from sparse_transfer.upstream.__main__ import main as upstream_main
from sparse_transfer.vision.__main__ import main as vision_main


@pytest.mark.parametrize("main", [glue_main, upstream_main, vision_main], ids=["glue", "upstream", "vision"])
@pytest.mark.parametrize(
    "flag, new",
    [
        ("--overwrite_output_dir", "--overwrite"),
        ("--no_resume", "--overwrite"),
        ("--hub_model_id=u/x", "--push-to-hub USER/NAME"),
        ("--hub_private", "--hub-private-repo"),
    ],
)
def test_replaced_spellings_name_the_new_one(main, flag, new, capsys):
    assert main(["--output_dir", "x", flag]) == 2
    err = capsys.readouterr().err
    assert f"is now {new}" in err and "Traceback" not in err


def test_glue_epochs_have_one_spelling(capsys):
    assert glue_main(["--task", "rte", "--num_train_epochs", "3"]) == 2
    assert "--num_train_epochs is now --epochs" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["glue", "upstream", "vision"])
def test_every_command_takes_the_same_spellings(module):
    import importlib

    config = importlib.import_module(f"sparse_transfer.{module}.config")
    parser = config.make_parser() if module == "glue" else None
    if parser is None:
        from transformers import HfArgumentParser

        dataclass = config.UpstreamArguments if module == "upstream" else config.VisionArguments
        parser = HfArgumentParser(dataclass)
    assert {"--overwrite", "--push-to-hub", "--hub-private-repo"} <= set(parser._option_string_actions)


def test_glue_help_shows_the_recipe_first_and_groups_the_inherited_arguments():
    from sparse_transfer.glue.config import make_parser

    help_text = make_parser().format_help()
    sections = [help_text.index(s) for s in ("\nrecipe:", "\nGLUE run", "\nsparse training (SparseTrainer)",
                                              "\ntransformers.TrainingArguments (inherited")]
    assert sections == sorted(sections)
    inherited = help_text[sections[-1]:]
    assert "--learning_rate" in inherited and "--mask_targets" not in inherited and "--lora_r" not in inherited


@pytest.mark.parametrize("module", ["glue", "upstream", "vision", "inspect", "push", "demo"])
def test_every_help_prints(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", f"sparse_transfer.{module}", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-500:]


def test_recipes_by_name_in_every_command():
    from sparse_transfer.upstream.config import parse_args as upstream_args
    from sparse_transfer.vision.config import parse_args as vision_args

    assert upstream_args(["--recipe", "minilm_90"]).sparsity == 0.9
    assert vision_args(["--recipe", "resnet50_gmp_90_1x", "--data", "x"]).method == "gmp"
    with pytest.raises(FileNotFoundError, match="known: .*minilm_80"):
        upstream_args(["--recipe", "minilm_91"])


def test_hub_private_repo_is_a_bare_flag_in_glue_too():
    from sparse_transfer.glue.config import _push_to_hub_argv

    assert _push_to_hub_argv(["--push-to-hub", "u/x", "--hub-private-repo"])[-2:] == ["--hub_private_repo", "true"]
    assert _push_to_hub_argv(["--hub-private-repo", "false"]) == ["--hub-private-repo", "false"]


def test_glue_help_hides_the_refused_spellings():
    from sparse_transfer.glue.config import make_parser

    help_text = make_parser().format_help()
    assert "--num_train_epochs NUM" not in help_text and "--hub_model_id HUB" not in help_text


@pytest.mark.parametrize(
    "family, positions, tokenizer_limit, limit",
    [("bert", 64, None, 64), ("roberta", 66, None, 64), ("ibert", 64, None, 62), ("nystromformer", 64, None, 64),
     ("bert", 64, 32, 32)],
    ids=["bert", "roberta-reserves-padding-positions", "ibert-quantized-table", "nystromformer-table-has-more-rows",
         "tokenizer-declares-less"],
)
def test_sequences_longer_than_the_model_takes_are_refused(family, positions, tokenizer_limit, limit):
    """The limit is what a sequence of that length can index without an error: RoBERTa's positions start after
    padding_idx, so 66 position embeddings with pad 1 take 64 tokens."""
    import torch
    import transformers

    from sparse_transfer._cli import check_sequence_length

    config_class, model_class = {
        "bert": ("BertConfig", "BertModel"), "roberta": ("RobertaConfig", "RobertaModel"),
        "ibert": ("IBertConfig", "IBertModel"), "nystromformer": ("NystromformerConfig", "NystromformerModel"),
    }[family]
    config = getattr(transformers, config_class)(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=positions, pad_token_id=1)
    model_class = getattr(transformers, model_class)
    model = model_class(config).eval()
    tokenizer = type("Tokenizer", (), {"model_max_length": tokenizer_limit or int(1e30)})()
    check_sequence_length(limit, "--max_seq_length", 128, "tiny", model, tokenizer)
    if tokenizer_limit is None:  # the model really takes `limit` tokens, and not one more
        model(torch.full((1, limit), 5))
        with pytest.raises((IndexError, RuntimeError)):
            model(torch.full((1, limit + 1), 5))
    with pytest.raises(ValueError, match=f"--max_seq_length 128 gives sequences of {limit + 1} tokens, longer than "
                                         f"tiny takes: {limit} tokens .*Pass --max_seq_length {limit} or less"):
        check_sequence_length(limit + 1, "--max_seq_length", 128, "tiny", model, tokenizer)
