"""Shared test set-up: offline, single-threaded torch (tiny models run faster that way on
2 shared cores, and results do not depend on the thread count)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
