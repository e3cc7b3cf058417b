"""Helpers shared by the data-preparation tests: load a recipe script, write tiny audio,
interrupt a preparation midway, run a script's command line, compare output folders."""

import filecmp
import importlib.util
import os
import subprocess
import sys

import numpy as np
import soundfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_recipe_module(relative_path):
    """Import a recipe script (``recipes/<DATASET>/<name>.py``; folder names are not packages)."""
    path = os.path.join(REPO_ROOT, relative_path)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tone(path, seconds=0.1, sample_rate=16000, frequency=220.0):
    """Write a short mono sine as a wav (or any format soundfile infers from the name)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    soundfile.write(
        path, 0.1 * np.sin(2 * np.pi * frequency * time), sample_rate
    )


def write_header_only_wav(path):
    """Write a 44-byte wav: a valid header with no samples (like 1076_MTI_SAD_XX.wav)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, np.zeros(0), 16000, subtype="PCM_16")
    assert os.path.getsize(path) == 44


class Interrupted(RuntimeError):
    """Raised by :func:`interrupt_csv_writes` to simulate a crash midway."""


def interrupt_csv_writes(monkeypatch, module, after):
    """Make ``module.write_csv`` succeed ``after`` times, then raise :class:`Interrupted`."""
    original = module.write_csv
    calls = {"count": 0}

    def failing_write_csv(*args, **kwargs):
        if calls["count"] >= after:
            raise Interrupted("simulated crash during preparation")
        calls["count"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "write_csv", failing_write_csv)


def assert_same_files(folder_a, folder_b):
    """Both folders hold the same relative file paths with byte-identical contents."""

    def listing(folder):
        return sorted(
            os.path.relpath(os.path.join(root, name), folder)
            for root, _, names in os.walk(folder)
            for name in names
        )

    files = listing(folder_a)
    assert files == listing(folder_b)
    for relative in files:
        assert filecmp.cmp(
            os.path.join(folder_a, relative),
            os.path.join(folder_b, relative),
            shallow=False,
        ), relative


def run_script(relative_path, *arguments):
    """Run a recipe script through its command line; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, relative_path), *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
