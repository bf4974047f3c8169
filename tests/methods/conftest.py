"""Tiny models gain nothing from a second intra-op thread; on a busy 2-core machine it makes them slower."""

import torch

torch.set_num_threads(1)
