"""Specification of result reuse: a finished fold is reused only under the configuration,
corpus and code that produced it (ser_modules/fingerprint.py, ser_modules/recipe.py)."""

import json
import os
import shutil

import pytest
from recipe_helpers import read_results, run_in_process

from ser_modules.fingerprint import (
    FingerprintMismatch,
    FolderBusy,
    FolderLock,
    check_fingerprint,
)
from ser_modules.mini_corpus import generate_mini_corpus

CUSTOM = "recipes/custom/train.py"


def fbank_arguments(corpus, output, *extra):
    return [
        "hparams/superb_fbank.yaml",
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.34",
        f"--output_folder={output}",
        "--number_of_epochs=1",
        "--batch_size=4",
        "--crop_seconds=1.0",
        *extra,
    ]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two mini corpora with the same file names and different audio."""
    root = tmp_path_factory.mktemp("corpora")
    folders = []
    for seed in (0, 1):
        folder = str(root / f"corpus{seed}")
        generate_mini_corpus(
            folder,
            num_speakers=2,
            utterances_per_class=3,
            duration_range=(0.5, 0.8),
            seed=seed,
        )
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def finished_run(corpora, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("finished"))
    run_in_process(CUSTOM, *fbank_arguments(corpora[0], output))
    return output


def test_a_rerun_with_the_same_command_reuses_the_finished_fold(
    corpora, finished_run
):
    before = read_results(finished_run)
    run_in_process(CUSTOM, *fbank_arguments(corpora[0], finished_run))
    assert read_results(finished_run)["pooled"] == before["pooled"]


def test_a_changed_option_in_an_existing_output_folder_is_refused_naming_it(
    corpora, finished_run
):
    before = read_results(finished_run)
    with pytest.raises(FingerprintMismatch, match="number_of_epochs") as error:
        run_in_process(
            CUSTOM,
            *fbank_arguments(corpora[0], finished_run, "--number_of_epochs=2"),
        )
    assert "--output_folder" in str(error.value)
    assert read_results(finished_run) == before


def test_a_corpus_re_recorded_in_place_is_refused(corpora, tmp_path):
    corpus = str(tmp_path / "corpus")
    shutil.copytree(corpora[0], corpus)
    output = str(tmp_path / "out")
    run_in_process(CUSTOM, *fbank_arguments(corpus, output))
    # Same file names, new recordings (the manifests stay the same apart from durations).
    for folder, _, names in os.walk(corpora[1]):
        for name in names:
            if name.endswith(".wav"):
                source = os.path.join(folder, name)
                shutil.copy(
                    source,
                    os.path.join(corpus, os.path.relpath(source, corpora[1])),
                )
    with pytest.raises(FingerprintMismatch, match="audio"):
        run_in_process(CUSTOM, *fbank_arguments(corpus, output))


def test_results_without_a_fingerprint_are_not_reused(tmp_path):
    folder = tmp_path / "fold1"
    folder.mkdir()
    (folder / "test_outcome.json").write_text("{}")
    with pytest.raises(FingerprintMismatch, match="without a fingerprint"):
        check_fingerprint(
            str(folder), {"a": 1}, "fold1", has_results=lambda f: True
        )


def test_fingerprint_mismatch_names_every_differing_key(tmp_path):
    check_fingerprint(
        str(tmp_path),
        {"hparams": {"lr": 0.1, "epochs": 1}, "code": {"git": "a"}},
        "x",
    )
    check_fingerprint(
        str(tmp_path),
        {"hparams": {"lr": 0.1, "epochs": 1}, "code": {"git": "b"}},
        "x",
    )  # info only
    with pytest.raises(FingerprintMismatch) as error:
        check_fingerprint(
            str(tmp_path),
            {"hparams": {"lr": 0.2, "epochs": 3}, "code": {"git": "a"}},
            "x",
        )
    assert "hparams.lr: stored 0.1, now 0.2" in str(error.value)
    assert "hparams.epochs: stored 1, now 3" in str(error.value)
    with open(tmp_path / "fingerprint.json", encoding="utf-8") as handle:
        assert json.load(handle)["hparams"]["lr"] == 0.1


def test_a_locked_output_folder_refuses_a_second_run(tmp_path):
    with FolderLock(str(tmp_path), what="this output folder"):
        with pytest.raises(FolderBusy, match=str(os.getpid())):
            with FolderLock(str(tmp_path), what="this output folder"):
                pass
    with FolderLock(str(tmp_path)):  # released
        pass


def test_a_non_numeric_epoch_count_names_the_option_and_the_file(
    corpora, tmp_path
):
    with pytest.raises(
        ValueError,
        match=r"--number_of_epochs='abc' is not a number .*superb_fbank.yaml",
    ):
        run_in_process(
            CUSTOM,
            *fbank_arguments(
                corpora[0], str(tmp_path / "out"), "--number_of_epochs=abc"
            ),
        )


def test_training_on_a_file_of_huge_samples_stops_naming_it(corpora, tmp_path):
    import numpy as np
    import soundfile

    from ser_modules.audio import AudioError

    corpus = str(tmp_path / "corpus")
    shutil.copytree(corpora[0], corpus)
    victim = sorted(
        os.path.join(d, n)
        for d, _, ns in os.walk(corpus)
        for n in ns
        if n.endswith(".wav")
    )[0]
    soundfile.write(
        victim, np.full(8000, 1e20, dtype=np.float32), 16000, subtype="FLOAT"
    )
    for cache in ("True", "False"):
        with pytest.raises(AudioError, match=os.path.basename(victim)):
            run_in_process(
                CUSTOM,
                *fbank_arguments(
                    corpus,
                    str(tmp_path / f"out_{cache}"),
                    f"--use_cache={cache}",
                ),
            )


def test_nan_features_in_training_stop_naming_the_files_instead_of_predicting(
    corpora, tmp_path, monkeypatch
):
    from ser_modules.feature_cache import NonFiniteFeaturesError
    from ser_modules.upstreams import FbankUpstream

    forward = FbankUpstream.forward

    def nan_forward(self, wavs, wav_lens=None):
        feats, lens = forward(self, wavs, wav_lens)
        return feats * float("nan"), lens

    monkeypatch.setattr(FbankUpstream, "forward", nan_forward)
    output = str(tmp_path / "out")
    with pytest.raises(
        NonFiniteFeaturesError,
        match=r"NaN or infinite features for the utterances .*\.wav\)",
    ):
        run_in_process(
            CUSTOM, *fbank_arguments(corpora[0], output, "--use_cache=False")
        )
    assert not os.path.isfile(os.path.join(output, "results.json"))


def test_a_latin1_labels_csv_names_the_file(corpora, tmp_path):
    corpus = str(tmp_path / "corpus")
    shutil.copytree(corpora[0], corpus)
    labels = os.path.join(corpus, "labels.csv")
    with open(labels, encoding="utf-8") as handle:
        text = handle.read()
    with open(labels, "w", encoding="latin-1") as handle:
        handle.write(text.replace("happy", "heureux-é", 1))
    with pytest.raises(
        ValueError, match=r"labels.csv is not UTF-8 text \(line \d+"
    ):
        run_in_process(CUSTOM, *fbank_arguments(corpus, str(tmp_path / "out")))


def test_a_non_numeric_preparation_option_names_the_option(corpora, tmp_path):
    with pytest.raises(
        ValueError, match=r"--valid_fraction='abc' is not a number"
    ):
        arguments = [
            a
            for a in fbank_arguments(corpora[0], str(tmp_path / "out"))
            if "valid_fraction" not in a
        ]
        run_in_process(CUSTOM, *arguments, "--valid_fraction=abc")


def test_the_default_output_folder_names_the_dataset(
    corpora, tmp_path, monkeypatch
):
    from prepare_helpers import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    arguments = [
        a
        for a in fbank_arguments(corpora[0], "unused")
        if not a.startswith("--output_folder")
    ]
    arguments[0] = os.path.join(REPO_ROOT, arguments[0])
    run_in_process(CUSTOM, *arguments)
    assert os.path.isfile(
        tmp_path
        / "results"
        / "custom"
        / "superb_fbank"
        / "1986"
        / "results.json"
    )


def test_a_run_on_an_output_folder_in_use_fails_clearly(corpora, tmp_path):
    output = str(tmp_path / "out")
    with FolderLock(output, what="this output folder"):  # another run holds it
        with pytest.raises(FolderBusy, match="Another process"):
            run_in_process(CUSTOM, *fbank_arguments(corpora[0], output))
    assert not os.path.isdir(os.path.join(output, "main"))
