"""Helpers of the recipe-level tests: run a ``train.py`` in this process or as a child
process, kill a child at an intra-epoch checkpoint, read what a run left on disk."""

import contextlib
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
import yaml
from prepare_helpers import REPO_ROOT
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG

# One thread everywhere: runs in this process (see conftest) and child processes then
# compute in the same order, so their numbers can be compared closely.
CHILD_ENV = dict(
    os.environ,
    PYTHONPATH=REPO_ROOT,
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
)
COMMON_OPTIONS = ["--device=cpu", "--noprogressbar"]


@contextlib.contextmanager
def restored_logging():
    """Undo what ``sb.create_experiment_directory`` does to logging for the whole process."""
    root = logging.getLogger()
    handlers, level, excepthook = (
        list(root.handlers),
        root.level,
        sys.excepthook,
    )
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.excepthook = excepthook


def run_in_process(script, *arguments):
    """Run ``recipes/<DATASET>/train.py`` as ``python script arguments`` would, in this process.

    Saves the 5-10 s of imports a child process pays.
    """
    path = os.path.join(REPO_ROOT, script)
    argv, sys_path = list(sys.argv), list(sys.path)
    sys.argv = [path, *arguments, *COMMON_OPTIONS]
    sys.path.insert(0, os.path.dirname(path))
    try:
        with restored_logging():
            runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, sys_path


def start_child(script, *arguments, launcher=()):
    """Start ``python [launcher] script arguments`` as a child process (output to a log file)."""
    log_path = os.path.join(
        os.environ.get("TMPDIR", "/tmp"),
        f"recipe_child_{os.getpid()}_{time.time_ns()}.log",
    )
    log = open(log_path, "w+", encoding="utf-8")
    process = subprocess.Popen(
        [
            sys.executable,
            *launcher,
            os.path.join(REPO_ROOT, script),
            *arguments,
            *COMMON_OPTIONS,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=CHILD_ENV,
        cwd=REPO_ROOT,
    )
    process.log = log
    return process


def child_output(process):
    """What a child process printed so far."""
    process.log.flush()
    process.log.seek(0)
    return process.log.read()


def run_child(script, *arguments, launcher=(), timeout=240):
    """Run a child process to its end; fail with its output when it fails."""
    process = start_child(script, *arguments, launcher=launcher)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"{script} did not finish in {timeout} s:\n{child_output(process)[-5000:]}"
        )
    output = child_output(process)
    process.log.close()
    assert process.returncode == 0, f"{script} failed:\n{output[-5000:]}"
    return output


def checkpoint_metas(save_folder):
    """The ``CKPT.yaml`` contents of the checkpoints in ``save_folder`` (unreadable ones skipped)."""
    metas = []
    if not os.path.isdir(save_folder):
        return metas
    for name in sorted(os.listdir(save_folder)):
        try:
            with open(
                os.path.join(save_folder, name, "CKPT.yaml"), encoding="utf-8"
            ) as handle:
                meta = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(meta, dict):
            metas.append(meta)
    return metas


def has_intra_epoch_checkpoint(save_folder, after_epochs=0):
    """An intra-epoch checkpoint exists, saved after the checkpoint of epoch ``after_epochs``.

    The intra-epoch checkpoint is written after the end-of-epoch one is complete, so the
    run is then inside epoch ``after_epochs + 1``.
    """
    metas = checkpoint_metas(save_folder)
    if after_epochs == 0:
        return any(meta.get(INTRA_EPOCH_CKPT_FLAG) for meta in metas)
    ended = [
        meta["unixtime"]
        for meta in metas
        if int(meta.get("epoch", 0)) >= after_epochs
    ]
    return bool(ended) and any(
        meta.get(INTRA_EPOCH_CKPT_FLAG) and meta["unixtime"] > min(ended)
        for meta in metas
    )


def kill_when(process, condition, timeout=240):
    """SIGKILL ``process`` as soon as ``condition()`` holds (polled every 5 ms).

    Fails when the process ends first: the test would not exercise an interruption.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                "The run ended before the kill point was reached:\n"
                + child_output(process)[-5000:]
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(
                "The kill point was not reached in time:\n"
                + child_output(process)[-5000:]
            )
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    process.log.close()


def read_test_outcome(output_folder, split="main"):
    """``<output_folder>/<split>/test_outcome.json``."""
    with open(
        os.path.join(output_folder, split, "test_outcome.json"),
        encoding="utf-8",
    ) as handle:
        return json.load(handle)


def read_test_probabilities(output_folder, split="main"):
    """Test ids and the ``(N, C)`` class probabilities of one split."""
    outcome = read_test_outcome(output_folder, split)
    return outcome["ids"], np.asarray(
        outcome["probabilities"], dtype=np.float64
    )


def read_results(output_folder):
    """``<output_folder>/results.json``."""
    with open(
        os.path.join(output_folder, "results.json"), encoding="utf-8"
    ) as handle:
        return json.load(handle)
