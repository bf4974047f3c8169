"""The torchrun launcher of the multi-process tests: a worker lost to a signal is run once more, and only that."""

from __future__ import annotations

import os

import pytest

from .torchrun import torchrun, worker_signals


def launch(tmp_path, mode: str) -> str:
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "stale.txt").write_text("from the first run")
    torchrun("tests.torchrun_worker", [str(out), mode], timeout=120, fresh=[str(out)])
    return sorted(os.listdir(out))


def test_a_worker_aborted_once_is_run_again_from_an_empty_folder(tmp_path):
    with pytest.warns(UserWarning, match=r"lost workers to signals \[6") as record:
        files = launch(tmp_path, "abort-once")
    assert files == ["rank0.txt", "rank1.txt"]  # the first run's outputs are gone
    assert "Fatal Python error: Aborted" in str(record[0].message)  # the faulthandler's stack is kept


def test_a_worker_that_aborts_twice_fails(tmp_path):
    with pytest.warns(UserWarning, match="running it once more"):
        with pytest.raises(pytest.fail.Exception, match=r"(?s)failed \(exit 1\).*Fatal Python error: Aborted\s*$"):
            launch(tmp_path, "abort")


def test_a_worker_that_raises_fails_at_once_with_its_error_last(tmp_path, recwarn):
    with pytest.raises(pytest.fail.Exception, match=r"(?s)RuntimeError: rank 1 raised on purpose\s*$"):
        launch(tmp_path, "raise")
    assert not [w for w in recwarn if "once more" in str(w.message)]


def test_worker_signals_reads_torchrun_summary():
    summary = "  rank      : 1 (local_rank: 1)\n  exitcode  : -6 (pid: 5)\n  rank : 0\n  exitcode  : -15 (pid: 4)\n"
    assert worker_signals(summary) == [6, 15]
    assert worker_signals(summary.replace("-15", "1")) is None
    assert worker_signals("no summary at all") is None
    # torchrun's log line before the summary is not a worker's record
    assert worker_signals("E1203 api.py:1002] failed (exitcode: -6) local_rank: 1\n" + summary) == [6, 15]
    torchrun_traceback = "Traceback (most recent call last):\n  ...\nerrors.ChildFailedError: \n"
    assert worker_signals(torchrun_traceback + summary) == [6, 15]
    # a worker raised, then torchrun SIGTERM'd it when the other died of a signal: the exception is the failure
    worker_traceback = "Traceback (most recent call last):\n  ...\nRuntimeError: a real bug\n"
    assert worker_signals(worker_traceback + torchrun_traceback + summary) is None
