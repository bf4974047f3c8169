"""A worker for tests/test_torchrun.py: ``torchrun -m tests.torchrun_worker OUT MODE``; rank 1 fails as MODE says.

MODE: ``ok``; ``raise`` (a Python exception); ``abort`` (SIGABRT, as gloo's C++ exceptions end); ``abort-once``
(SIGABRT the first time only: it leaves a marker beside OUT, which the retry does not delete).
"""

import os
import sys

if __name__ == "__main__":
    out, mode, rank = sys.argv[1], sys.argv[2], int(os.environ["RANK"])
    if rank == 1 and mode == "raise":
        raise RuntimeError("rank 1 raised on purpose")
    if rank == 1 and mode.startswith("abort"):
        marker = os.path.join(os.path.dirname(out), "aborted")
        if mode == "abort" or not os.path.exists(marker):
            open(marker, "w").close()
            os.abort()
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(mode)
