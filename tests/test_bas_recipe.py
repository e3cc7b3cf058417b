"""The BAS recipe end to end: search -> derive -> retrain -> test, on a mini corpus.

A run killed (``kill -9``) inside the search or inside the retraining and started again
with the same command resumes: a finished phase is not redone, and it ends with the same
architecture and test probabilities as an uninterrupted run. Degenerate audio (a 0.05 s
utterance, one shorter than one WavLM frame) trains without NaN, and all-equal thetas are
resolved to the first candidate and reported as ties.
"""

import json
import os

import numpy as np
import pytest
import soundfile
from recipe_helpers import (
    has_intra_epoch_checkpoint,
    kill_when,
    read_results,
    read_test_outcome,
    read_test_probabilities,
    run_in_process,
    start_child,
)

from ser_modules.manifest import read_csv
from ser_modules.mini_corpus import generate_mini_corpus
from ser_modules.upstreams.tiny import save_tiny_model

CUSTOM = "recipes/custom/train.py"


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


def bas_arguments(corpus, output, *extra, hparams="hparams/bas_fbank.yaml"):
    """The BAS command line with tiny settings: 2 search epochs, 2 retraining epochs."""
    return [
        hparams,
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--output_folder={output}",
        "--search_epochs=2",
        "--number_of_epochs=2",
        "--ffn_dim=16",
        "--batch_size=4",
        "--search_lr=0.05",
        "--lr=0.05",
        "--ckpt_interval_steps=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def uninterrupted_run(mini_corpus, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("uninterrupted"))
    run_in_process(CUSTOM, *bas_arguments(mini_corpus, output))
    return output


def file_state(path):
    """(modification time, contents) of a file."""
    with open(path, "rb") as handle:
        return os.stat(path).st_mtime_ns, handle.read()


def logged_epochs(path):
    """The epoch numbers of the per-epoch loss lines of a SpeechBrain train log."""
    with open(path, encoding="utf-8") as handle:
        return [
            int(line.split(",")[0].split()[1])
            for line in handle
            if "train loss" in line
        ]


def test_killed_search_and_retraining_resume_to_the_uninterrupted_results(
    mini_corpus, uninterrupted_run, tmp_path
):
    output = str(tmp_path / "killed")
    arguments = bas_arguments(mini_corpus, output)
    search_folder = os.path.join(output, "main", "search")
    architecture_file = os.path.join(search_folder, "architecture.json")

    # 1. Killed inside the second search epoch.
    search_save = os.path.join(search_folder, "save")
    kill_when(
        start_child(CUSTOM, *arguments),
        lambda: has_intra_epoch_checkpoint(search_save, after_epochs=1),
    )
    assert not os.path.exists(architecture_file)

    # 2. The same command finishes the search, then is killed inside the first retraining epoch.
    retrain_save = os.path.join(output, "main", "save")
    kill_when(
        start_child(CUSTOM, *arguments),
        lambda: has_intra_epoch_checkpoint(retrain_save),
    )
    searched = {
        path: file_state(path)
        for path in (
            architecture_file,
            os.path.join(search_folder, "search_log.txt"),
        )
    }
    # The search resumed inside epoch 2: epoch 1 was not searched again.
    assert logged_epochs(os.path.join(search_folder, "search_log.txt")) == [
        1,
        2,
    ]

    # 3. The same command finishes the retraining without touching the finished search.
    run_in_process(CUSTOM, *arguments)
    assert {path: file_state(path) for path in searched} == searched
    assert logged_epochs(os.path.join(output, "main", "train_log.txt")) == [
        1,
        2,
    ]

    found, reference = (
        read_results(output)["search"],
        read_results(uninterrupted_run)["search"],
    )
    assert found["architectures"] == reference["architectures"]
    np.testing.assert_allclose(
        found["probabilities"]["main"],
        reference["probabilities"]["main"],
        atol=1e-6,
    )
    ids, probabilities = read_test_probabilities(output)
    reference_ids, reference_probabilities = read_test_probabilities(
        uninterrupted_run
    )
    assert ids == reference_ids
    np.testing.assert_allclose(
        probabilities, reference_probabilities, rtol=0, atol=1e-6
    )


def test_search_results_are_reported_per_fold_with_the_retrained_outcome(
    uninterrupted_run,
):
    results = read_results(uninterrupted_run)
    search = results["search"]
    assert search["candidates"] == ["msa_ffn", "msa", "ffn"]
    assert len(search["architectures"]["main"]) == 3
    assert set(search["architectures"]["main"]) <= set(search["candidates"])
    np.testing.assert_allclose(
        np.sum(search["probabilities"]["main"], axis=1), 1.0, rtol=1e-6
    )
    assert os.path.isfile(
        os.path.join(uninterrupted_run, "main", "search", "theta_heatmap.png")
    )
    assert (
        read_test_outcome(uninterrupted_run)["search"]["architecture"]
        == search["architectures"]["main"]
    )


@pytest.fixture(scope="module")
def corpus_with_short_utterances(mini_corpus, tmp_path_factory):
    """The mini corpus where, in every emotion, one utterance lasts 0.05 s and one 100
    samples (less than the 400 samples one WavLM frame needs)."""
    folder = tmp_path_factory.mktemp("short") / "corpus"
    os.makedirs(folder)
    for row in read_csv(os.path.join(mini_corpus, "labels.csv")):
        waveform, rate = soundfile.read(os.path.join(mini_corpus, row["path"]))
        if row["path"].endswith("spk01_" + row["emotion"] + "_000.wav"):
            waveform = waveform[: int(0.05 * rate)]
        elif row["path"].endswith("spk01_" + row["emotion"] + "_001.wav"):
            waveform = waveform[:100]
        os.makedirs(os.path.dirname(folder / row["path"]), exist_ok=True)
        soundfile.write(folder / row["path"], waveform, rate)
    with open(
        os.path.join(mini_corpus, "labels.csv"), encoding="utf-8"
    ) as source:
        (folder / "labels.csv").write_text(source.read(), encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_wavlm"), kind="wavlm")


@pytest.mark.parametrize(
    "use_cache", [True, False], ids=["cached", "on_the_fly"]
)
def test_utterances_shorter_than_one_upstream_frame_train_without_nan(
    corpus_with_short_utterances, tiny_wavlm, tmp_path, use_cache
):
    output = str(tmp_path / "out")
    run_in_process(
        CUSTOM,
        *bas_arguments(
            corpus_with_short_utterances,
            output,
            hparams="hparams/bas_ssl.yaml",
        ),
        f"--ssl_source={tiny_wavlm}",
        "--search_epochs=1",
        "--number_of_epochs=1",
        f"--use_cache={use_cache}",
        "--ckpt_interval_steps=0",
    )
    durations = {
        row["ID"]: float(row["duration"])
        for row in read_csv(os.path.join(output, "prepared", "train.csv"))
    }
    assert min(durations.values()) < 400 / 16000, (
        "no utterance shorter than one frame reached training"
    )
    ids, probabilities = read_test_probabilities(output)
    assert np.isfinite(probabilities).all()
    with open(os.path.join(output, "log.txt"), encoding="utf-8") as handle:
        padded = [line for line in handle if "zero-padded" in line]
    # The 4 utterances of 100 samples (one per emotion) are padded to one frame, and logged.
    assert padded and all("400 samples" in line for line in padded)
    assert sum(int(line.split(" - ")[-1].split()[0]) for line in padded) == 4
    with open(
        os.path.join(output, "main", "search", "search_log.txt"),
        encoding="utf-8",
    ) as handle:
        assert "nan" not in handle.read().lower()
    with open(
        os.path.join(output, "main", "train_log.txt"), encoding="utf-8"
    ) as handle:
        assert "nan" not in handle.read().lower()


def test_all_equal_thetas_take_the_first_candidate_and_are_reported_as_ties(
    mini_corpus, tmp_path
):
    # A zero learning rate (theta's own Adam in the default search mode) leaves every
    # theta at its initial 0.
    output = str(tmp_path / "out")
    run_in_process(
        CUSTOM,
        *bas_arguments(mini_corpus, output),
        "--theta_lr=0",
        "--search_epochs=1",
        "--number_of_epochs=1",
        "--ckpt_interval_steps=0",
    )
    search = read_results(output)["search"]
    assert search["architectures"]["main"] == ["msa_ffn", "msa_ffn", "msa_ffn"]
    assert search["ties"]["main"] == [0, 1, 2]
    np.testing.assert_allclose(
        search["probabilities"]["main"], np.full((3, 3), 1 / 3)
    )
    with open(
        os.path.join(output, "main", "search", "architecture.json"),
        encoding="utf-8",
    ) as handle:
        assert json.load(handle)["ties"] == [0, 1, 2]


def test_search_over_the_extended_candidates_runs_end_to_end_and_plots_them_all(
    mini_corpus, tmp_path
):
    # Beyond the paper: the Table IV models' blocks join the search space.
    candidates = ["msa_ffn", "msa", "ffn", "shift", "speechformer"]
    output = str(tmp_path / "out")
    run_in_process(
        CUSTOM,
        *bas_arguments(mini_corpus, output),
        f"--candidates=[{','.join(candidates)}]",
        "--num_heads=4",
        "--search_epochs=2",
        "--number_of_epochs=1",
        "--ckpt_interval_steps=0",
    )
    results = read_results(output)
    search = results["search"]
    assert search["candidates"] == candidates
    probabilities = np.array(search["probabilities"]["main"])
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert len(np.unique(probabilities.round(6))) > 1, (
        "the thetas did not move: the search did nothing"
    )
    assert set(search["architectures"]["main"]) <= set(candidates)
    heatmap = os.path.join(output, "main", "search", "theta_heatmap.png")
    import matplotlib.image

    # One column per candidate: the figure is wider than a 3-candidate one (2.5 + 1.5 K in).
    assert (
        matplotlib.image.imread(heatmap).shape[1] >= 100 * (2.5 + 1.5 * 5) * 0.9
    )
    from ser_modules.reports.tables import build_report

    report = build_report([output])
    assert "| layer | msa_ffn | msa | ffn | shift | speechformer |" in report


def test_search_restarts_are_reported_and_the_retraining_equals_training_the_architecture(
    mini_corpus, uninterrupted_run, tmp_path
):
    # Three searches; the recipe retrains the one kept on validation.
    output = str(tmp_path / "restarts")
    run_in_process(
        CUSTOM, *bas_arguments(mini_corpus, output, "--search_restarts=3")
    )
    results = read_results(output)
    restarts = results["search"]["restarts"]["main"]
    assert [r["seed"] for r in restarts["restarts"]] == [1986, 1987, 1988]
    kept = restarts["restarts"][restarts["chosen"] - 1]
    assert kept["valid"]["UA"] == max(
        r["valid"]["UA"] for r in restarts["restarts"]
    )
    assert results["search"]["architectures"]["main"] == kept["architecture"]
    with open(os.path.join(output, "results.md"), encoding="utf-8") as handle:
        report = handle.read()
    assert "Search restarts" in report and report.count("| main | ") >= 3
    # Restart 1 is the single search of the uninterrupted run (same seed).
    assert restarts["restarts"][0]["architecture"] == (
        results_architecture := read_results(uninterrupted_run)["search"][
            "architectures"
        ]["main"]
    )
    # The search draws from its own streams: retraining the derived architecture is
    # training it with --search=False, number for number.
    plain = str(tmp_path / "plain")
    architecture = "[" + ",".join(results_architecture) + "]"
    run_in_process(
        CUSTOM,
        *bas_arguments(
            mini_corpus,
            plain,
            "--search=False",
            f"--architecture={architecture}",
        ),
    )
    plain_ids, plain_probabilities = read_test_probabilities(plain)
    ids, probabilities = read_test_probabilities(uninterrupted_run)
    assert plain_ids == ids
    np.testing.assert_array_equal(plain_probabilities, probabilities)
