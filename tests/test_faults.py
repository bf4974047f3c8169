"""Fault injection: kill -9 at many points of a run, corrupted and swapped files, non-finite values.

Every case ends in correct recovery (rerunning the same command ends with the weights of an uninterrupted run) or in
a clear error. Kills are real SIGKILLs of a forked child process, at the k-th file write of its run (every
``torch.save``, ``save_file``, ``json.dump`` and ``os.replace``), so they land inside checkpoint saves.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from sparse_transfer import GMP, SparseTrainer, dense_masks
from sparse_transfer.hf.trainer import CHECKPOINT_COMPLETE_NAME, last_complete_checkpoint

from .conftest import make_tiny_bert
from .hf.conftest import make_args, make_dataset
from .kill_points import install_kill_at_write

STEPS = 8


def train_or_resume(out) -> dict[str, torch.Tensor]:
    """The 'same command': GMP fine-tuning that saves every 2 steps and resumes from its last complete checkpoint."""
    model = make_tiny_bert()
    method = GMP(dense_masks(model, "bert"), final_sparsity=0.8, start_step=0, end_step=6, interval=2)
    args = make_args(out, unfreeze="none", max_steps=STEPS, save_strategy="steps", save_steps=2, save_total_limit=1,
                     logging_steps=1)
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(16), method=method)
    trainer.train(resume_from_checkpoint=True if last_complete_checkpoint(out) else None)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_killed_at(out, k: int) -> bool:
    """Runs the command in a forked child that SIGKILLs itself at its k-th file write; True if it was killed."""
    pid = os.fork()
    if pid == 0:
        try:
            install_kill_at_write(k)
            train_or_resume(out)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train_or_resume(tmp_path_factory.mktemp("uninterrupted") / "out")


@pytest.mark.parametrize("k", [1, 4, 9, 14, 20, 27, 33, 41])
def test_kill_9_at_any_write_then_rerun_ends_like_an_uninterrupted_run(reference, tmp_path, k):
    out = tmp_path / "out"
    killed = run_killed_at(out, k)
    assert killed, f"the run finished before its write #{k}: pick kill points inside the run"
    final = train_or_resume(out)  # the same command again
    assert final.keys() == reference.keys()
    for name in reference:
        assert torch.equal(final[name], reference[name]), f"kill at write #{k}: {name} differs"


def test_an_interrupted_checkpoint_is_never_resumed_from(tmp_path):
    out = tmp_path / "out"
    train_or_resume(out)
    last = last_complete_checkpoint(out)
    # truncate a file of the newest checkpoint, as a kill during its write would leave it
    weights = os.path.join(last, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    assert last_complete_checkpoint(out) != last
    with pytest.raises(ValueError, match="is incomplete: its save was interrupted"):
        model = make_tiny_bert()
        SparseTrainer(model=model, args=make_args(out, unfreeze="none", max_steps=STEPS), train_dataset=make_dataset(16),
                      method=GMP(dense_masks(model, "bert"), 0.8, 0, 6, 2)).train(resume_from_checkpoint=last)
    os.remove(os.path.join(last, CHECKPOINT_COMPLETE_NAME))
    assert last_complete_checkpoint(out) != last


@pytest.mark.parametrize("where", ["", "no-such-checkpoint"])
def test_resuming_from_a_path_that_is_not_a_folder_names_it(tmp_path, where):
    model = make_tiny_bert()
    trainer = SparseTrainer(model=model, args=make_args(tmp_path / "out", unfreeze="none", max_steps=STEPS),
                            train_dataset=make_dataset(16), method=GMP(dense_masks(model, "bert"), 0.8, 0, 6, 2))
    path = str(tmp_path / where) if where else where
    with pytest.raises(ValueError, match="is not a folder. Pass a checkpoint folder"):
        trainer.train(resume_from_checkpoint=path)


def test_a_non_finite_loss_stops_training_before_anything_is_saved(tmp_path):
    from transformers import TrainerCallback

    class NaNWeight(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))

    model = make_tiny_bert()
    out = tmp_path / "out"
    args = make_args(out, unfreeze="none", max_steps=STEPS, save_strategy="steps", save_steps=2, logging_steps=2)
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(16), callbacks=[NaNWeight()],
                            method=GMP(dense_masks(model, "bert"), 0.8, 0, 6, 2))
    with pytest.raises(RuntimeError, match=r"loss became NaN or inf at step 3; stopped before|hold NaN or inf"):
        trainer.train()
    assert last_complete_checkpoint(out).endswith("checkpoint-2")  # the good checkpoint was not saved over
    assert not (out / "checkpoint-4").exists()
    assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoint-2" / "model.safetensors").values())


def test_a_refused_checkpoint_save_leaves_no_half_written_folder(tmp_path):
    """A pruned weight revived outside the optimizer step: the save is refused, and its folder goes with it."""
    from transformers import TrainerCallback

    from sparse_transfer import Constant, SparseMasks

    from .hf.conftest import make_sparse_bert

    class Revive(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 4:  # after the step's masked update, before its save
                with torch.no_grad():
                    weight = model.bert.encoder.layer[0].attention.self.query.weight
                    weight[weight == 0] = 1.0

    model = make_sparse_bert()
    out = tmp_path / "out"
    args = make_args(out, unfreeze="none", max_steps=STEPS, save_strategy="steps", save_steps=2, logging_steps=100)
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(16), callbacks=[Revive()],
                            method=Constant(SparseMasks.from_zeros(model, "bert")))
    with pytest.raises(RuntimeError, match=r"Refusing to save .*checkpoint-4.*: \d+ pruned weights are non-zero"):
        trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-2"]
    assert last_complete_checkpoint(out).endswith("checkpoint-2")


def test_a_failure_after_a_checkpoint_is_complete_keeps_it(tmp_path, monkeypatch):
    """Only the half-written folder of a failed save goes: an error while deleting older checkpoints keeps the new one."""
    import transformers.trainer_utils

    def rotation_fails(**kwargs):
        raise PermissionError("cannot delete an old checkpoint")

    monkeypatch.setattr(transformers.trainer_utils, "rotate_checkpoints", rotation_fails)
    model = make_tiny_bert()
    out = tmp_path / "out"
    args = make_args(out, unfreeze="none", max_steps=STEPS, save_strategy="steps", save_steps=2, save_total_limit=1)
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(16),
                            method=GMP(dense_masks(model, "bert"), 0.8, 0, 6, 2))
    with pytest.raises(PermissionError, match="cannot delete an old checkpoint"):
        trainer.train()
    assert last_complete_checkpoint(out).endswith("checkpoint-2")


def test_an_interrupt_just_after_the_marker_keeps_the_checkpoint(tmp_path, monkeypatch):
    import sparse_transfer.hf.trainer as trainer_module

    mark = trainer_module.mark_checkpoint_complete

    def mark_then_interrupt(folder):
        mark(folder)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "mark_checkpoint_complete", mark_then_interrupt)
    model = make_tiny_bert()
    out = tmp_path / "out"
    args = make_args(out, unfreeze="none", max_steps=STEPS, save_strategy="steps", save_steps=2)
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(16),
                            method=GMP(dense_masks(model, "bert"), 0.8, 0, 6, 2))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert last_complete_checkpoint(out).endswith("checkpoint-2")


def test_resume_refuses_a_weights_file_swapped_for_another_of_the_same_size(tmp_path):
    """Sizes cannot see this swap; the mask file's weights fingerprint does."""
    import shutil

    from sparse_transfer import Constant, SparseMasks

    from .hf.conftest import make_sparse_bert

    def trainer(out):
        model = make_sparse_bert()
        args = make_args(out, unfreeze="none", max_steps=STEPS, save_strategy="steps", save_steps=2)
        return SparseTrainer(model=model, args=args, train_dataset=make_dataset(16),
                             method=Constant(SparseMasks.from_zeros(model, "bert")))

    out = tmp_path / "out"
    trainer(out).train()
    shutil.copy(out / "checkpoint-2" / "model.safetensors", out / "checkpoint-4" / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors changed since the checkpoint was saved"):
        trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(out / "checkpoint-4"))
    # a marker without content fingerprints (written by an earlier version): the masks' weights fingerprint still sees it
    marker = out / "checkpoint-4" / CHECKPOINT_COMPLETE_NAME
    marker.write_text(json.dumps({"files": json.loads(marker.read_text())["files"]}))
    with pytest.raises(ValueError, match="its weights are not those its sparse_masks.safetensors was saved beside"):
        trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(out / "checkpoint-4"))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "trainer_state.json"])
def test_resume_refuses_a_checkpoint_file_swapped_for_another_of_the_same_size(tmp_path, name):
    """A same-size file from another checkpoint (another step's optimizer state) passes the sizes of the completion
    marker; its content fingerprint does not."""
    import shutil

    model = make_tiny_bert()
    out = tmp_path / "out"
    args = make_args(out, unfreeze="none", max_steps=4, save_strategy="steps", save_steps=2)
    SparseTrainer(model=model, args=args, train_dataset=make_dataset(16),
                  method=GMP(dense_masks(model, "bert"), 0.8, 0, 4, 2)).train()
    source, target = out / "checkpoint-2" / name, out / "checkpoint-4" / name
    if name == "trainer_state.json":  # text: edit it in place, keeping its size
        text = target.read_text()
        target.write_text(text.replace('"global_step": 4', '"global_step": 5'))
    else:
        shutil.copy(source, target)
    assert os.path.getsize(source if name != "trainer_state.json" else target) == os.path.getsize(target)
    assert last_complete_checkpoint(out).endswith("checkpoint-4")  # sizes alone pass it
    model = make_tiny_bert()
    trainer = SparseTrainer(model=model, args=make_args(out, unfreeze="none", max_steps=6, save_strategy="steps",
                                                         save_steps=2),
                            train_dataset=make_dataset(16), method=GMP(dense_masks(model, "bert"), 0.8, 0, 4, 2))
    with pytest.raises(ValueError, match=rf"{name} changed since the checkpoint was saved"):
        trainer.train(resume_from_checkpoint=True)


def _four_steps(out, max_steps=4):
    model = make_tiny_bert()
    args = make_args(out, unfreeze="none", max_steps=max_steps, save_strategy="steps", save_steps=2)
    return SparseTrainer(model=model, args=args, train_dataset=make_dataset(16),
                         method=GMP(dense_masks(model, "bert"), 0.8, 0, 4, 2))


def test_saving_again_into_a_checkpoint_folder_first_removes_its_marker(tmp_path, monkeypatch):
    """A run resumed from checkpoint-2 saves checkpoint-4 again: a kill during that save must leave checkpoint-4
    incomplete (resume falls back to checkpoint-2), not old and new files under the old marker; a stale marker .tmp is
    neither listed nor kept."""
    from transformers import Trainer

    from sparse_transfer.hf.trainer import check_checkpoint_untouched, checkpoint_is_complete

    out = tmp_path / "out"
    _four_steps(out).train()
    (out / "checkpoint-4" / (CHECKPOINT_COMPLETE_NAME + ".tmp")).write_text("{stale")
    original = Trainer._save_optimizer_and_scheduler

    def killed(self, output_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", killed)
    with pytest.raises(KeyboardInterrupt):
        _four_steps(out).train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert not checkpoint_is_complete(out / "checkpoint-4")
    assert last_complete_checkpoint(out).endswith("checkpoint-2")
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    _four_steps(out).train(resume_from_checkpoint=True)
    marker = json.loads((out / "checkpoint-4" / CHECKPOINT_COMPLETE_NAME).read_text())
    assert not any(name.endswith(".tmp") for name in marker["files"])
    assert not (out / "checkpoint-4" / (CHECKPOINT_COMPLETE_NAME + ".tmp")).exists()
    check_checkpoint_untouched(out / "checkpoint-4")


def test_resume_refuses_a_file_added_to_a_checkpoint_or_a_malformed_marker(tmp_path):
    out = tmp_path / "out"
    _four_steps(out).train()
    checkpoint = out / "checkpoint-4"
    torch.save({"scale": 1.0}, checkpoint / "scaler.pt")  # transformers would load it as the GradScaler's state
    with pytest.raises(ValueError, match="scaler.pt was added after the checkpoint was saved"):
        _four_steps(out, 6).train(resume_from_checkpoint=True)
    os.remove(checkpoint / "scaler.pt")
    marker_path = checkpoint / CHECKPOINT_COMPLETE_NAME
    marker = json.loads(marker_path.read_text())
    for fingerprints in (list(marker["fingerprints"]), {**marker["fingerprints"], "../checkpoint-2/optimizer.pt": "0"}):
        marker_path.write_text(json.dumps({**marker, "fingerprints": fingerprints}))
        with pytest.raises(ValueError, match="is malformed"):
            _four_steps(out, 6).train(resume_from_checkpoint=str(checkpoint))
    marker_path.write_text(json.dumps(marker))
    _four_steps(out, 6).train(resume_from_checkpoint=True)  # untouched again: resumes


def test_run_lock_leaves_no_empty_folder_and_frees_the_folder_on_failure(tmp_path):
    from sparse_transfer._rundir import RunDirInUse, run_lock

    new = tmp_path / "new"
    with pytest.raises(OSError):
        with run_lock(new):
            raise OSError("the model could not be loaded")
    assert not new.exists()  # created for the lock, nothing else written: removed again
    with run_lock(new):
        (new / "results.json").write_text("{}")
        with pytest.raises(RunDirInUse, match="Another process is training into"):
            with run_lock(new):
                pass
    with run_lock(new):  # released: the next run may start
        pass
    assert (new / "results.json").is_file()
