"""The emotion recipes end to end on fixture corpora: a tiny random WavLM folder as
``--ssl_source``, cached versus on-the-fly features, resumption after ``kill -9``,
two-process DDP on CPU and bf16 training.

Runs go through ``train.py``'s command line (in this process where possible: it saves the
imports of a child process), on corpora of a few dozen utterances, for 1-2 epochs.
"""

import json
import os

import numpy as np
import pytest
import test_cremad_prepare
import test_iemocap_prepare
import torch
from recipe_helpers import (
    has_intra_epoch_checkpoint,
    kill_when,
    read_results,
    read_test_probabilities,
    run_child,
    run_in_process,
    start_child,
)
from speechbrain.utils.checkpoints import Checkpointer
from test_meld_prepare import meld_root  # noqa: F401  (fixture: a miniature MELD.Raw)

from ser_modules.mini_corpus import generate_mini_corpus
from ser_modules.resume import (
    COMPLETION_RECORD,
    CheckpointCompletion,
    remove_incomplete_checkpoints,
)
from ser_modules.upstreams.tiny import save_tiny_model

SUPERB_WAVLM = "hparams/superb_ssl.yaml"
CUSTOM = "recipes/custom/train.py"
METRICS = ("WA", "UA", "WF1")
# The SUPERB classifier and the two Table IV downstream models (the downstream switch).
DOWNSTREAMS = ("superb", "shiftformer", "speechformer")


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_wavlm"), kind="wavlm")


@pytest.fixture(scope="module")
def mini_corpus(tmp_path_factory):
    """4 emotions x 2 speakers x 3 utterances of about 1 s, in the custom-corpus layout."""
    folder = tmp_path_factory.mktemp("mini") / "corpus"
    generate_mini_corpus(
        str(folder),
        num_speakers=2,
        utterances_per_class=3,
        duration_range=(0.8, 1.2),
    )
    return str(folder)


@pytest.fixture(scope="module")
def mini_arguments(mini_corpus, tiny_wavlm, tmp_path_factory):
    """The command line shared by the runs compared with each other (output folder apart).

    A large learning rate makes the test probabilities depend on every training step.
    The feature cache is shared: each run finds the features already extracted. Training
    and evaluation crops differ, as both paths (cache and on the fly) must honour them.
    """
    cache = tmp_path_factory.mktemp("shared_cache")
    return [
        SUPERB_WAVLM,
        f"--data_folder={mini_corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--ssl_source={tiny_wavlm}",
        f"--cache_folder={cache}",
        "--number_of_epochs=2",
        "--batch_size=4",
        "--lr=0.1",
        "--ckpt_interval_steps=1",
        "--crop_seconds=0.9",
        "--eval_crop_seconds=0.6",
    ]


@pytest.fixture(scope="module")
def cached_run(mini_arguments, tmp_path_factory):
    """An uninterrupted run on cached features: the reference of the comparisons."""
    output = str(tmp_path_factory.mktemp("cached_run"))
    run_in_process(CUSTOM, *mini_arguments, f"--output_folder={output}")
    return output


@pytest.fixture(scope="module")
def reference_runs(cached_run, mini_arguments, tmp_path_factory):
    """``downstream -> output folder`` of uninterrupted runs, made on first use."""
    runs = {"superb": cached_run}

    def get(downstream):
        if downstream not in runs:
            output = str(tmp_path_factory.mktemp(f"{downstream}_run"))
            run_in_process(
                CUSTOM,
                *mini_arguments,
                f"--output_folder={output}",
                f"--downstream_model={downstream}",
            )
            check_results(output, ["main"])
            runs[downstream] = output
        return runs[downstream]

    return get


def check_results(output, expected_folds):
    """results.json holds every fold with WA / UA / WF1 in [0, 1], and the pooled scores."""
    results = read_results(output)
    assert sorted(results["folds"]) == sorted(expected_folds)
    for scores in [*results["folds"].values(), results["pooled"]]:
        for metric in METRICS:
            assert 0.0 <= scores[metric] <= 1.0, (metric, scores[metric])
    for fold in expected_folds:
        _, probabilities = read_test_probabilities(output, fold)
        assert np.isfinite(probabilities).all()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    return results


def cache_sources(output):
    """The upstream sources named by the key files of the feature caches of a run."""
    cache_root = os.path.join(output, "feature_cache")
    sources = set()
    for key in os.listdir(cache_root):
        with open(
            os.path.join(cache_root, key, "key.json"), encoding="utf-8"
        ) as handle:
            sources.add(json.load(handle)["upstream"]["source"])
    return sources


def test_iemocap_runs_five_session_folds_on_a_tiny_wavlm_through_the_cache(
    tmp_path, tiny_wavlm
):
    release = test_iemocap_prepare.build_release(str(tmp_path))
    output = str(tmp_path / "out")
    run_in_process(
        "recipes/IEMOCAP/train.py",
        SUPERB_WAVLM,
        f"--data_folder={release}",
        "--allow_partial=True",
        f"--ssl_source={tiny_wavlm}",
        f"--output_folder={output}",
        "--number_of_epochs=1",
    )
    results = check_results(output, [f"fold{number}" for number in range(1, 6)])
    assert results["dataset"] == "IEMOCAP"
    assert results["folds"]["fold1"]["labels"] == ["ang", "hap", "neu", "sad"]
    assert cache_sources(output) == {os.path.abspath(tiny_wavlm)}


def test_meld_runs_the_official_split_on_a_tiny_wavlm_through_the_cache(
    tmp_path, tiny_wavlm, meld_root
):  # noqa: F811
    output = str(tmp_path / "out")
    run_in_process(
        "recipes/MELD/train.py",
        SUPERB_WAVLM,
        f"--data_folder={meld_root}",
        f"--ssl_source={tiny_wavlm}",
        f"--output_folder={output}",
        "--number_of_epochs=1",
        "--num_workers=1",
    )
    results = check_results(output, ["main"])
    assert results["selection"]["metric"] == "WF1"
    assert cache_sources(output) == {os.path.abspath(tiny_wavlm)}


@pytest.mark.parametrize("downstream", DOWNSTREAMS)
def test_cremad_runs_the_random_split_on_a_tiny_wavlm_through_the_cache(
    tmp_path, tiny_wavlm, downstream
):
    corpus = test_cremad_prepare.build_corpus(str(tmp_path))
    output = str(tmp_path / "out")
    run_in_process(
        "recipes/CREMA-D/train.py",
        SUPERB_WAVLM,
        f"--data_folder={corpus}",
        f"--ssl_source={tiny_wavlm}",
        f"--output_folder={output}",
        "--number_of_epochs=1",
        f"--downstream_model={downstream}",
    )
    results = check_results(output, ["main"])
    assert results["pooled"]["labels"] == [
        "ang",
        "dis",
        "fea",
        "hap",
        "neu",
        "sad",
    ]
    assert cache_sources(output) == {os.path.abspath(tiny_wavlm)}


def test_cached_features_train_to_the_same_probabilities_as_features_computed_on_the_fly(
    cached_run, mini_arguments, tmp_path
):
    output = str(tmp_path / "on_the_fly")
    run_in_process(
        CUSTOM,
        *mini_arguments,
        f"--output_folder={output}",
        "--use_cache=False",
    )
    assert not os.path.isdir(os.path.join(output, "feature_cache"))
    ids, on_the_fly = read_test_probabilities(output)
    cached_ids, cached = read_test_probabilities(cached_run)
    assert ids == cached_ids
    # The cache stores float16 (features within 2^-11 relative); here the probabilities
    # agree to about 1e-5.
    np.testing.assert_allclose(on_the_fly, cached, rtol=0, atol=5e-4)
    assert np.abs(cached - 0.25).max() > 0.05, (
        "the model did not learn: the comparison shows nothing"
    )


@pytest.mark.parametrize("downstream", DOWNSTREAMS)
def test_run_killed_mid_epoch_resumes_to_the_results_of_an_uninterrupted_run(
    reference_runs, mini_arguments, tmp_path, downstream
):
    cached_run = reference_runs(downstream)
    output = str(tmp_path / "killed")
    arguments = [
        *mini_arguments,
        f"--output_folder={output}",
        f"--downstream_model={downstream}",
    ]
    save_folder = os.path.join(output, "main", "save")
    kill_when(
        start_child(CUSTOM, *arguments),
        lambda: has_intra_epoch_checkpoint(save_folder, after_epochs=1),
    )
    assert not os.path.isfile(os.path.join(output, "main", "test_outcome.json"))
    run_in_process(CUSTOM, *arguments)
    ids, resumed = read_test_probabilities(output)
    reference_ids, reference = read_test_probabilities(cached_run)
    assert ids == reference_ids
    np.testing.assert_allclose(resumed, reference, rtol=0, atol=1e-6)
    with open(
        os.path.join(output, "main", "train_log.txt"), encoding="utf-8"
    ) as handle:
        epochs = [
            line.split(",")[0] for line in handle if line.startswith("epoch:")
        ]
    assert epochs == ["epoch: 1", "epoch: 2"], (
        "the resumed run redid or skipped an epoch"
    )


def test_checkpoints_cut_short_by_a_kill_are_removed_before_recovery(tmp_path):
    # What a kill leaves while SpeechBrain writes a checkpoint (CKPT.yaml comes first):
    # a parameter file cut short, or the files written without the completion record.
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, {"model": model})
    checkpointer.add_recoverable(COMPLETION_RECORD, CheckpointCompletion())
    complete = checkpointer.save_checkpoint()
    truncated = checkpointer.save_checkpoint()
    with open(truncated.paramfiles["model"], "r+b") as handle:
        handle.truncate(10)
    checkpointer.recoverables.pop(COMPLETION_RECORD)
    unrecorded = checkpointer.save_checkpoint()
    assert len(checkpointer.list_checkpoints()) == 3

    remove_incomplete_checkpoints(checkpointer)
    assert [c.path for c in checkpointer.list_checkpoints()] == [complete.path]
    assert not os.path.exists(truncated.path) and not os.path.exists(
        unrecorded.path
    )


@pytest.mark.parametrize(
    "model_arguments",
    [
        # BAS covers both Brains (super net search and retraining) under DDP, and
        # the search restarts (fresh modules, checkpointers and DDP wrappers each).
        (
            "hparams/bas_fbank.yaml",
            "--search_epochs=1",
            "--ffn_dim=16",
            "--search_restarts=2",
        ),
        ("hparams/shiftformer.yaml", "--upstream_kind=fbank"),
        ("hparams/speechformer.yaml", "--upstream_kind=fbank"),
    ],
    ids=["bas", "shiftformer", "speechformer"],
)
def test_two_process_ddp_on_cpu_finishes_and_writes_results(
    mini_corpus, tmp_path, model_arguments
):
    output = str(tmp_path / "ddp")
    run_child(
        CUSTOM,
        *model_arguments,
        f"--data_folder={mini_corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--output_folder={output}",
        "--number_of_epochs=1",
        "--batch_size=4",
        "--ckpt_interval_steps=1",
        "--distributed_backend=gloo",
        launcher=(
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
        ),
        timeout=300,
    )
    results = check_results(output, ["main"])
    if model_arguments[0].endswith("bas_fbank.yaml"):
        assert len(results["search"]["architectures"]["main"]) == 3
        restarts = results["search"]["restarts"]["main"]["restarts"]
        assert [r["seed"] for r in restarts] == [1986, 1987]


def test_bf16_training_runs_and_gives_finite_probabilities(
    mini_arguments, tmp_path
):
    output = str(tmp_path / "bf16")
    run_in_process(
        CUSTOM,
        *mini_arguments,
        f"--output_folder={output}",
        "--precision=bf16",
        "--use_cache=False",
        "--number_of_epochs=1",
    )
    check_results(output, ["main"])
