"""Exact resumption of interrupted training, shared by every Brain of the project.

A run killed at any point (mid-epoch, or while a checkpoint is being written) and re-run
with the same command ends bit-identical to an uninterrupted run. Three pieces make it so:

* :class:`RandomState` checkpoints the Python, NumPy and torch generators, as plain data
  and tensors only, so it is read back with ``torch.load(weights_only=True)``: a checkpoint
  file can never execute code;
* :func:`loader_generator` gives every DataLoader a private generator, so creating an
  iterator after recovery does not shift the global random stream;
* :class:`CheckpointCompletion` (registered last, so its file is written last) records the
  size of every other file of a checkpoint, and :func:`remove_incomplete_checkpoints`
  deletes the checkpoints a kill cut short before SpeechBrain tries to recover them.

Used by :class:`ser_modules.training.EmotionBrain` and
:class:`ser_modules.vesper.pretraining.VesperPretrainBrain`.
"""

import contextlib
import json
import logging
import os
import random
import shutil

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from torch.nn import DataParallel as DP
from torch.nn.parallel import DistributedDataParallel as DDP

from ser_modules.manifest import atomic_write_text

logger = logging.getLogger(__name__)


def unwrap_module(module):
    """The module itself when ``DistributedDataParallel`` (or ``DataParallel``) wraps it.

    Brain wraps every trainable module for multi-process training; the wrapper forwards
    calls but not the module's own methods (``set_temperature``, ``architecture_logits``).
    """
    return module.module if isinstance(module, (DDP, DP)) else module


def _numpy_state_to_data(state):
    """NumPy's legacy generator state as tensors and plain values (weights_only-loadable)."""
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(
            np.asarray(keys, dtype=np.uint32).astype(np.int64)
        ),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state_from_data(data):
    return (
        data["name"],
        data["keys"].numpy().astype(np.uint32),
        data["position"],
        data["has_gauss"],
        data["cached_gaussian"],
    )


@register_checkpoint_hooks
class RandomState:
    """Checkpoints the Python, NumPy and torch random generators.

    With it in the checkpointer's recoverables, a run killed after an (intra-epoch)
    checkpoint replays exactly the same dropout masks, Gumbel noise and random crops after
    recovery, so it ends with the same numbers as an uninterrupted run. The file holds
    only tensors, ints, floats and strings, and is read with ``weights_only=True``.
    """

    @mark_as_saver
    def _save(self, path):
        if not sb.utils.distributed.if_main_process():
            return  # save hooks run on every process: one writer per file
        version, internal, gauss = random.getstate()
        state = {
            "python": {
                "version": int(version),
                "internal": torch.tensor(internal, dtype=torch.int64),
                "gauss": gauss,
            },
            "numpy": _numpy_state_to_data(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del end_of_epoch
        try:
            state = torch.load(path, weights_only=True)
        except (
            Exception
        ) as error:  # an unpickling error names the offending global
            raise RuntimeError(
                f"Refusing to load {path}: it is not a plain random-state file (only tensors and "
                f"plain values may be stored; {error}). Delete the checkpoint folder it belongs to."
            ) from error
        python = state["python"]
        random.setstate(
            (
                python["version"],
                tuple(int(v) for v in python["internal"].tolist()),
                python["gauss"],
            )
        )
        np.random.set_state(_numpy_state_from_data(state["numpy"]))
        torch.set_rng_state(state["torch"])


@contextlib.contextmanager
def own_random_streams(seed):
    """Runs the block from random streams seeded with ``seed``, then restores the outer ones.

    Python's, NumPy's and torch's generators (CPU, and every CUDA device when CUDA is
    available) are seeded on entry and put back on exit, so what the block draws depends
    on ``seed`` alone, and what runs after it draws exactly what it would have drawn
    without the block. The BAS search runs this way (see
    :func:`ser_modules.bas_search.search_architecture`): the super net's starting weights,
    its Gumbel noise and dropout do not depend on the retraining network built before it,
    and the retraining does not depend on how long the search ran.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = (
        list(range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else []
    )
    with torch.random.fork_rng(devices=devices):
        try:
            random.seed(int(seed))
            np.random.seed(int(seed) % 2**32)
            torch.manual_seed(int(seed))
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def loader_generator(seed, stage=None):
    """A seeded ``torch.Generator`` for a DataLoader, so that iterating it leaves the global RNG alone.

    Every ``iter(DataLoader)`` draws a worker base seed from the loader's generator, or
    from the global torch RNG when it has none. A run recovered inside an epoch creates
    its iterator after :class:`RandomState` restored the global RNG, where the
    uninterrupted run had created it before the checkpoint: with the global RNG that extra
    draw would shift every later dropout mask and Gumbel sample.
    """
    offset = {sb.Stage.TRAIN: 1, sb.Stage.VALID: 2, sb.Stage.TEST: 3}.get(
        stage, 4
    )
    return torch.Generator().manual_seed(int(seed) * 10 + offset)


COMPLETION_RECORD = (
    "completion"  # recoverable name: <checkpoint>/completion.ckpt
)


@register_checkpoint_hooks
class CheckpointCompletion:
    """The last file of every checkpoint: the size of each file written before it.

    SpeechBrain writes ``CKPT.yaml`` first and the parameter files after it, so a run
    killed while saving (likely with ``ckpt_interval_steps=1``) leaves a checkpoint that
    looks valid but holds missing or truncated files, and recovering it fails.
    :func:`remove_incomplete_checkpoints` deletes the checkpoints whose record is missing
    or does not match the files, before the Brain recovers.
    """

    @mark_as_saver
    def _save(self, path):
        # SpeechBrain calls save hooks on every process, and some of them write files on
        # every process: record the sizes once all of them are done.
        sb.utils.distributed.ddp_barrier()
        if not sb.utils.distributed.if_main_process():
            return
        folder, own_name = os.path.split(path)
        sizes = {
            name: os.path.getsize(os.path.join(folder, name))
            for name in sorted(os.listdir(folder))
            if name != own_name and not name.startswith(".")
        }
        atomic_write_text(path, json.dumps(sizes) + "\n")

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del (
            path,
            end_of_epoch,
        )  # nothing to restore: the file only vouches for the others


def checkpoint_is_complete(folder):
    """Whether a checkpoint folder holds every file its completion record lists, in full."""
    record_path = os.path.join(folder, COMPLETION_RECORD + ".ckpt")
    try:
        with open(record_path, encoding="utf-8") as handle:
            sizes = json.load(handle)
    except (OSError, ValueError):
        return False
    return "CKPT.yaml" in sizes and all(
        os.path.isfile(os.path.join(folder, name))
        and os.path.getsize(os.path.join(folder, name)) == size
        for name, size in sizes.items()
    )


def remove_incomplete_checkpoints(checkpointer):
    """Delete the checkpoints a crash cut short (main process; the others wait).

    Recovery then falls back to the latest complete checkpoint, which every kill leaves:
    SpeechBrain deletes older checkpoints only after saving the new one.
    """
    if checkpointer is None:
        return
    if sb.utils.distributed.if_main_process() and os.path.isdir(
        checkpointer.checkpoints_dir
    ):
        for name in sorted(os.listdir(checkpointer.checkpoints_dir)):
            folder = os.path.join(checkpointer.checkpoints_dir, name)
            if (
                name.startswith("CKPT")
                and os.path.isdir(folder)
                and not checkpoint_is_complete(folder)
            ):
                logger.warning(
                    "Removing the checkpoint %s: it was cut short by an interruption (files "
                    "missing or truncated). Training resumes from the previous checkpoint.",
                    folder,
                )
                shutil.rmtree(folder)
    sb.utils.distributed.ddp_barrier()


def register_completion_record(checkpointer):
    """Add :class:`CheckpointCompletion` as the checkpointer's LAST recoverable.

    Call it at the end of ``on_fit_start``, after the Brain added the optimiser, the
    scheduler and the dataloaders, so the record is the last file of every checkpoint.
    """
    if checkpointer is None:
        return
    checkpointer.recoverables.pop(COMPLETION_RECORD, None)
    checkpointer.add_recoverable(COMPLETION_RECORD, CheckpointCompletion())
