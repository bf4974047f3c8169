"""Real ``kill -9`` at a chosen point of a run: the process SIGKILLs itself at its k-th file write.

A write is any call of ``torch.save``, ``safetensors.torch.save_file``, ``json.dump`` or ``os.replace`` (the last
step of every atomic write), so kill points land inside checkpoint and model saves as well as between them.
"""

from __future__ import annotations

import json
import os
import signal


def install_kill_at_write(k: int) -> None:
    """From now on, this process dies by SIGKILL at its k-th file write (counted from 1)."""
    import safetensors.torch
    import torch
    import transformers.trainer

    calls = [0]

    def wrap(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    for module, name in ((torch, "save"), (safetensors.torch, "save_file"), (json, "dump"), (os, "replace"),
                         (transformers.trainer, "save_file")):
        if hasattr(module, name):
            setattr(module, name, wrap(getattr(module, name)))
