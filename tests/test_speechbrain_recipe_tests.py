"""SpeechBrain's own recipe tooling, unchanged, on our recipes.

``tests/speechbrain_utils/`` holds SpeechBrain's ``tests/utils/recipe_tests.py`` and
``check_yaml.py`` as they are in its repository (see the NOTICE there). The rows of
``tests/recipes/<DATASET>.csv`` list every (recipe script, hparams file) pair with debug
flags on the tiny committed samples of ``tests/samples/`` (``make_samples.py``
regenerates them). These tests do what SpeechBrain's CI does with them:

* ``run_recipe_tests`` runs every row of a dataset (``filters_fields=["Dataset"]``, as
  upstream filters) as a child process ``PYTHONPATH=<recipe folder> python <script>
  <hparams> <flags> --device=cpu --output_folder=... --debug --debug_persistently``
  and checks the files each row names;
* ``check_yaml_vs_script`` (as ``tests/consistency/test_yaml.py`` calls it) finds every
  top-level key of each hparams file used by its script or by another key.

The child command sets ``PYTHONPATH`` to the recipe's folder only, so ``ser_modules`` comes
from the installed package, as for a user. Here the ``python`` on the children's ``PATH``
is this interpreter with this checkout appended to ``PYTHONPATH``: the code under test is
this tree, not another installed copy.
"""

import concurrent.futures
import csv
import glob
import hashlib
import os
import re
import stat
import sys

import pytest
from speechbrain_utils.check_yaml import check_yaml_vs_script
from speechbrain_utils.recipe_tests import run_recipe_tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_FOLDER = os.path.join("tests", "recipes")


def recipe_rows():
    """Every row of ``tests/recipes/*.csv``, read as upstream reads them."""
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, RECIPE_FOLDER, "*.csv"))):
        with open(path, newline="", encoding="utf-8") as handle:
            rows.extend(csv.DictReader(handle, skipinitialspace=True))
    return rows


DATASETS = sorted({row["Dataset"] for row in recipe_rows()})


def use_this_checkout(bin_folder, monkeypatch):
    """Run from the repository root (the CSV paths are relative to it) with a ``python``
    that imports this checkout's ``ser_modules``."""
    os.makedirs(bin_folder, exist_ok=True)
    wrapper = os.path.join(bin_folder, "python")
    with open(wrapper, "w", encoding="utf-8") as handle:
        handle.write(
            "#!/bin/sh\n"
            f'PYTHONPATH="${{PYTHONPATH}}:{ROOT}" exec {sys.executable} "$@"\n'
        )
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)


def run_dataset_rows(dataset, output_folder):
    """``run_recipe_tests`` on one dataset's rows, as upstream filters them.

    Returns
    -------
    (bool, dict)
        Its verdict, and the end of ``stderr.txt`` of every row that did not pass.
    """
    passed = run_recipe_tests(
        recipe_folder=RECIPE_FOLDER,
        filters_fields=["Dataset"],
        filters=[[dataset]],
        run_opts="--device=cpu --noprogressbar",
        output_folder=output_folder,
    )
    failures = {}
    for folder in sorted(glob.glob(os.path.join(output_folder, "*"))):
        if not os.path.exists(os.path.join(folder, ".passed")):
            with open(
                os.path.join(folder, "stderr.txt"), encoding="utf-8"
            ) as handle:
                failures[os.path.basename(folder)] = handle.read()[-2000:]
    return passed, failures, len(os.listdir(output_folder))


@pytest.fixture(scope="module")
def recipe_test_runs(tmp_path_factory):
    """Every dataset's rows, two datasets at a time (each row is a child process)."""
    work = tmp_path_factory.mktemp("recipe_tests")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_this_checkout(str(work / "bin"), monkeypatch)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = {
                dataset: pool.submit(
                    run_dataset_rows, dataset, str(work / dataset)
                )
                for dataset in DATASETS
            }
            return {
                dataset: future.result() for dataset, future in futures.items()
            }


@pytest.fixture
def in_repository(tmp_path, monkeypatch):
    """See :func:`use_this_checkout`."""
    use_this_checkout(str(tmp_path / "bin"), monkeypatch)
    return tmp_path


def test_the_vendored_tools_are_speechbrains_files_unchanged():
    folder = os.path.join(ROOT, "tests", "speechbrain_utils")
    with open(os.path.join(folder, "NOTICE"), encoding="utf-8") as handle:
        released = dict(
            (name, digest)
            for digest, name in re.findall(
                r"^([0-9a-f]{64})  (\S+)$", handle.read(), re.M
            )
        )
    assert set(released) == {"recipe_tests.py", "check_yaml.py"}
    for name, digest in released.items():
        with open(os.path.join(folder, name), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest, name


def test_every_hparams_file_of_the_recipes_is_listed():
    """Every emotion hparams file is listed for every train.py, the classic baseline's
    for every baseline.py, every pretraining file for pretrain.py: the CSVs cover all
    pairs a user can run."""
    listed = {(row["Script_file"], row["Hparam_file"]) for row in recipe_rows()}
    hparams = sorted(glob.glob("hparams/*.yaml", root_dir=ROOT))
    emotion = [h for h in hparams if "pretrain" not in h and "svm" not in h]
    expected = {
        (f"recipes/{dataset}/train.py", h)
        for dataset in ("IEMOCAP", "MELD", "CREMA-D", "custom")
        for h in emotion
    }
    expected |= {
        (f"recipes/{dataset}/baseline.py", "hparams/svm_egemaps.yaml")
        for dataset in ("IEMOCAP", "MELD", "CREMA-D", "custom")
    }
    expected |= {
        ("recipes/LSSED/pretrain.py", h) for h in hparams if "pretrain" in h
    }
    assert expected <= listed, sorted(expected - listed)


def test_check_yaml_vs_script_passes_on_every_listed_pair(in_repository):
    """SpeechBrain's yaml-vs-script check, called as upstream calls it."""
    failing = [
        (row["Hparam_file"], row["Script_file"])
        for row in recipe_rows()
        if not check_yaml_vs_script(row["Hparam_file"], row["Script_file"])
    ]
    assert failing == []


@pytest.mark.parametrize("dataset", DATASETS)
def test_run_recipe_tests_runs_every_row_green(recipe_test_runs, dataset):
    """``run_recipe_tests`` on the dataset's rows: each recipe runs and writes the
    files its row names (the failures' stderr is in the assertion message)."""
    passed, failures, runs = recipe_test_runs[dataset]
    assert passed, failures
    assert runs == len(
        [row for row in recipe_rows() if row["Dataset"] == dataset]
    )
