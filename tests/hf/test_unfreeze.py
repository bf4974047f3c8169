"""Encoder blocks and the parameter groups of every unfreezing stage, for each BERT-family architecture."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sparse_transfer.core import select_targets
from sparse_transfer.hf import GradualUnfreezer, find_encoder_blocks, unfreeze_stage

from .conftest import SEQ_LEN, VOCAB, make_sparse_bert

TINY = dict(vocab_size=VOCAB, max_position_embeddings=64)


def tiny_bert():
    return make_sparse_bert()


def tiny_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2, **TINY
    )
    return RobertaForSequenceClassification(config)


def tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=2, **TINY)
    return DistilBertForSequenceClassification(config)


def tiny_electra():
    from transformers import ElectraConfig, ElectraForSequenceClassification

    # embedding_size != hidden_size, so that ELECTRA's embeddings_project linear exists.
    config = ElectraConfig(
        embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=2, **TINY,
    )
    return ElectraForSequenceClassification(config)


# One table drives every architecture test: the block list, the head's weight matrices (trained from stage 0)
# and the embedding parameters (frozen unless unfreeze_embeddings).
ARCHITECTURES = {
    "bert": dict(
        build=tiny_bert,
        blocks="bert.encoder.layer",
        head={"classifier.weight", "bert.pooler.dense.weight"},
        embeddings={f"bert.embeddings.{k}_embeddings.weight" for k in ("word", "position", "token_type")},
    ),
    "roberta": dict(
        build=tiny_roberta,
        blocks="roberta.encoder.layer",
        head={"classifier.dense.weight", "classifier.out_proj.weight"},
        embeddings={f"roberta.embeddings.{k}_embeddings.weight" for k in ("word", "position", "token_type")},
    ),
    "distilbert": dict(
        build=tiny_distilbert,
        blocks="distilbert.transformer.layer",
        head={"pre_classifier.weight", "classifier.weight"},
        embeddings={f"distilbert.embeddings.{k}_embeddings.weight" for k in ("word", "position")},
    ),
    "electra": dict(
        build=tiny_electra,
        blocks="electra.encoder.layer",
        head={"classifier.dense.weight", "classifier.out_proj.weight"},
        embeddings={f"electra.embeddings.{k}_embeddings.weight" for k in ("word", "position", "token_type")}
        | {"electra.embeddings_project.weight"},
    ),
}


def always_trainable(names) -> set[str]:
    """Biases and LayerNorm parameters, by name (independently of how the unfreezer sorts them)."""
    return {n for n in names if n.endswith(".bias") or re.search(r"(LayerNorm|layer_norm)\.", n)}


def expected_stage(names, spec, stage: int, num_blocks: int, unfreeze_embeddings: bool = False) -> set[str]:
    always = always_trainable(names)
    trainable = always | spec["head"]
    for k in range(1, min(stage, num_blocks) + 1):
        prefix = f"{spec['blocks']}.{num_blocks - k}."
        trainable |= {n for n in names if n.startswith(prefix)}
    if stage == num_blocks + 1:
        trainable = set(names) - (set() if unfreeze_embeddings else spec["embeddings"] - always)
    return trainable


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_encoder_blocks_are_found(arch):
    spec = ARCHITECTURES[arch]
    model = spec["build"]()
    blocks = find_encoder_blocks(model)
    assert [name for name, _ in blocks] == [f"{spec['blocks']}.0", f"{spec['blocks']}.1"]
    modules = dict(model.named_modules())
    assert all(module is modules[name] for name, module in blocks)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("unfreeze_embeddings", [False, True])
def test_trainable_parameters_at_every_stage(arch, unfreeze_embeddings):
    spec = ARCHITECTURES[arch]
    model = spec["build"]()
    names = [n for n, _ in model.named_parameters()]
    assert spec["head"] <= set(names) and spec["embeddings"] <= set(names)
    unfreezer = GradualUnfreezer(model, unfreeze_embeddings=unfreeze_embeddings)
    assert unfreezer.num_stages == 4  # head, block 1, block 0, everything

    for stage in range(unfreezer.num_stages):
        unfreezer.set_stage_(stage)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == expected_stage(names, spec, stage, 2, unfreeze_embeddings), f"stage {stage}"
        assert unfreezer.stage == stage

    # Every sparse target (the six encoder linears per block) is frozen in stage 0 and trains in the last stage.
    unfreezer.set_stage_(0)
    targets = select_targets(model, "bert")
    assert len(targets) == 12
    assert not any(p.requires_grad for p in targets.values())
    unfreezer.set_stage_(3)
    assert all(p.requires_grad for p in targets.values())


def test_blocks_unfreeze_back_to_front():
    model = make_sparse_bert()
    unfreezer = GradualUnfreezer(model)
    unfreezer.set_stage_(1)
    layer = model.bert.encoder.layer
    assert layer[1].attention.self.query.weight.requires_grad
    assert not layer[0].attention.self.query.weight.requires_grad
    assert layer[0].attention.self.query.bias.requires_grad  # biases always train
    assert len(unfreezer.describe()) == 4


@pytest.mark.parametrize(
    "pattern, expected",
    [
        (r"encoder\.layer$", ["bert.encoder.layer.0", "bert.encoder.layer.1"]),  # the ModuleList itself
        (r"encoder\.layer\.\d+$", ["bert.encoder.layer.0", "bert.encoder.layer.1"]),  # each block
        (r"encoder\.layer\.1$", ["bert.encoder.layer.1"]),
    ],
)
def test_override_pattern(pattern, expected):
    model = make_sparse_bert()
    assert [name for name, _ in find_encoder_blocks(model, pattern)] == expected
    unfreezer = GradualUnfreezer(model, encoder_blocks_pattern=pattern)
    assert unfreezer.num_stages == len(expected) + 2


def test_override_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"matched no module.*named_modules"):
        find_encoder_blocks(make_sparse_bert(), r"decoder\.block")


def test_model_without_blocks_is_a_clear_error():
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    with pytest.raises(ValueError, match=r"No encoder blocks found in Sequential.*encoder_blocks_pattern.*unfreeze='none'"):
        GradualUnfreezer(mlp)


def test_unfreeze_stage_formula():
    assert [unfreeze_stage(step, 3, 4) for step in range(15)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    for bad in [dict(step=0, steps_per_stage=0, num_stages=4), dict(step=-1, steps_per_stage=2, num_stages=4),
                dict(step=0, steps_per_stage=2, num_stages=0)]:
        with pytest.raises(ValueError):
            unfreeze_stage(**bad)


def test_state_dict_round_trip_and_mismatch():
    model = make_sparse_bert()
    unfreezer = GradualUnfreezer(model)
    unfreezer.set_stage_(2)
    state = unfreezer.state_dict()
    other = GradualUnfreezer(model)
    other.load_state_dict(state)
    assert other.stage == 2
    with pytest.raises(ValueError, match="different unfreezing schedule"):
        GradualUnfreezer(model, unfreeze_embeddings=True).load_state_dict(state)
    with pytest.raises(ValueError, match="different unfreezing schedule"):
        GradualUnfreezer(model, encoder_blocks_pattern=r"encoder\.layer\.1$").load_state_dict(state)
    with pytest.raises(ValueError, match=r"stage must be in \[0, 3\]"):
        unfreezer.set_stage_(4)


def test_frozen_weights_get_no_weight_gradient_computation():
    """requires_grad=False on a linear weight makes autograd skip its grad_weight matmul, and .grad stays None."""
    model = make_sparse_bert(dropout=0.0)
    unfreezer = GradualUnfreezer(model)
    batch = torch.randint(1, VOCAB, (4, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    tokens = batch.numel()

    def train_step_flops(stage: int) -> int:
        unfreezer.set_stage_(stage)
        model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=batch, labels=torch.zeros(4, dtype=torch.long)).loss.backward()
        return counter.get_total_flops()

    final = train_step_flops(3)
    head_only = train_step_flops(0)
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # What stage 0 saves is exactly one (tokens x in) @ (in x out) matmul per frozen encoder linear.
    saved = sum(2 * tokens * p.shape[0] * p.shape[1] for p in select_targets(model, "bert").values())
    assert final - head_only == saved
    one_block = train_step_flops(1)
    assert final - one_block == saved // 2
