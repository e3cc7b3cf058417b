"""Inference: a finished split exported as a model folder, loaded with SpeechBrain's
``from_hparams`` / ``foreign_class``, classifying files window by window, and the
``python -m ser_modules.infer`` command line.

One Fbank recipe run (2 epochs on 24 utterances of about 1 s, a large learning rate so the
probabilities are far from uniform) provides the model folder most tests load.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from prepare_helpers import REPO_ROOT, write_header_only_wav
from recipe_helpers import read_test_outcome, run_in_process
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.interfaces import foreign_class
from speechbrain.utils.checkpoints import Checkpointer

from ser_modules import infer
from ser_modules.audio import load_audio
from ser_modules.inference import (
    EmotionClassifier,
    classify_files,
    window_bounds,
)
from ser_modules.mini_corpus import generate_mini_corpus
from ser_modules.model_export import export_model_folder
from ser_modules.model_folder import ModelFolderError, check_model_folder
from ser_modules.upstreams.tiny import save_tiny_model

CROP_SECONDS = (
    1.5  # longer than every corpus utterance: one window each, as at test time
)
SAMPLE_RATE = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 emotions x 2 speakers x 3 utterances of 0.8-1.2 s."""
    folder = str(tmp_path_factory.mktemp("mini") / "corpus")
    generate_mini_corpus(
        folder,
        num_speakers=2,
        utterances_per_class=3,
        duration_range=(0.8, 1.2),
    )
    return folder


@pytest.fixture(scope="module")
def fbank_run(corpus, tmp_path_factory):
    """A finished Fbank recipe run (single split ``main``); returns its output folder."""
    output = str(tmp_path_factory.mktemp("fbank_run"))
    run_in_process(
        "recipes/custom/train.py",
        "hparams/superb_fbank.yaml",
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--output_folder={output}",
        "--number_of_epochs=2",
        "--batch_size=4",
        "--lr=0.1",
        f"--crop_seconds={CROP_SECONDS}",
    )
    return output


@pytest.fixture(scope="module")
def model_folder(fbank_run):
    return os.path.join(fbank_run, "main", "model")


@pytest.fixture(scope="module")
def classifier(model_folder):
    return EmotionClassifier.from_hparams(
        source=model_folder, savedir=model_folder, run_opts={"device": "cpu"}
    )


@pytest.fixture(scope="module")
def test_files(fbank_run, corpus):
    """``{utterance id: audio path}`` of the run's test set."""
    with open(
        os.path.join(fbank_run, "prepared", "test.csv"), encoding="utf-8"
    ) as handle:
        return {
            row["ID"]: row["wav"].replace("$data_root", corpus)
            for row in csv.DictReader(handle)
        }


def probability_vector(result, labels):
    return np.array([result["probabilities"][label] for label in labels])


def write_broken_audio(folder):
    """An empty (header-only) wav and a file of garbage bytes named .wav."""
    empty = os.path.join(folder, "empty.wav")
    write_header_only_wav(empty)
    garbage = os.path.join(folder, "garbage.wav")
    with open(garbage, "wb") as handle:
        handle.write(b"this is not audio" * 10)
    return empty, garbage


# --------------------------------------------------------------------------- export


def test_recipe_exports_the_selected_checkpoint_to_the_experiment_folder(
    fbank_run, model_folder
):
    outcome = read_test_outcome(fbank_run)
    assert outcome["model_folder"] == model_folder
    selected = Checkpointer(
        os.path.join(fbank_run, "main", "save")
    ).find_checkpoint(max_key="UA")
    for name in ("layer_combiner", "input_norm", "downstream"):
        with open(
            os.path.join(selected.path, f"{name}.ckpt"), "rb"
        ) as original:
            with open(
                os.path.join(model_folder, f"{name}.ckpt"), "rb"
            ) as copied:
                assert original.read() == copied.read(), name
    with open(os.path.join(fbank_run, "label_encoder.txt"), "rb") as original:
        with open(
            os.path.join(model_folder, "label_encoder.txt"), "rb"
        ) as copied:
            assert original.read() == copied.read()
    with open(
        os.path.join(model_folder, "hyperparams.yaml"), encoding="utf-8"
    ) as handle:
        text = handle.read()
    assert f"window_seconds: {CROP_SECONDS}" in text
    assert "!new:speechbrain.utils.parameter_transfer.Pretrainer" in text


def test_classifier_reproduces_the_test_time_probabilities(
    fbank_run, classifier, test_files
):
    outcome = read_test_outcome(fbank_run)
    expected = np.array(outcome["probabilities"])  # (N, C)
    # Far from uniform: a wrong input normalisation or layer weighting would show.
    assert np.abs(expected - 1 / expected.shape[1]).max() > 0.1
    assert classifier.labels == outcome["labels"]
    got = np.stack(
        [
            probability_vector(
                classifier.classify_file(test_files[utterance_id]),
                outcome["labels"],
            )
            for utterance_id in outcome["ids"]
        ]
    )
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_foreign_class_loads_the_model_folder(
    model_folder, classifier, test_files
):
    loaded = foreign_class(
        source=model_folder,
        pymodule_file="custom_interface.py",
        classname="EmotionClassifier",
        run_opts={"device": "cpu"},
    )
    path = next(iter(test_files.values()))
    assert (
        loaded.classify_file(path)["probabilities"]
        == classifier.classify_file(path)["probabilities"]
    )


def test_moved_model_folder_still_loads(
    model_folder, classifier, test_files, tmp_path
):
    moved = shutil.copytree(model_folder, tmp_path / "moved")
    loaded = EmotionClassifier.from_hparams(
        source=moved, savedir=moved, run_opts={"device": "cpu"}
    )
    path = next(iter(test_files.values()))
    assert loaded.model_folder == str(moved)
    assert (
        loaded.classify_file(path)["probabilities"]
        == classifier.classify_file(path)["probabilities"]
    )


# --------------------------------------------------------------------------- windows


def test_window_bounds_cover_the_recording_with_full_windows():
    assert window_bounds(10, 4, 4) == [
        (0, 4),
        (4, 8),
        (6, 10),
    ]  # last window ends at the end
    assert window_bounds(8, 4, 4) == [(0, 4), (4, 8)]
    assert window_bounds(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_bounds(3, 4, 4) == [(0, 3)]  # shorter than a window: as it is
    assert window_bounds(10, None, None) == [
        (0, 10)
    ]  # no window: the whole recording


def test_long_recording_is_classified_window_by_window(classifier, test_files):
    waveform = torch.cat(
        [load_audio(path) for path in list(test_files.values())[:4]]
    )  # (T,) > 3 s
    bounds = window_bounds(
        waveform.shape[0],
        int(CROP_SECONDS * SAMPLE_RATE),
        int(0.5 * SAMPLE_RATE),
    )
    result = classifier.classify_waveform(waveform, hop_seconds=0.5)
    assert len(result["windows"]) == len(bounds) > 4
    labels = classifier.labels
    windows = np.stack(
        [probability_vector(window, labels) for window in result["windows"]]
    )
    np.testing.assert_allclose(
        probability_vector(result, labels), windows.mean(axis=0), rtol=1e-6
    )
    assert result["label"] == labels[int(windows.mean(axis=0).argmax())]
    # Each window is classified as the segment alone would be.
    start, end = bounds[2]
    alone = classifier.classify_waveform(waveform[start:end])
    np.testing.assert_allclose(
        windows[2], probability_vector(alone, labels), atol=1e-5
    )
    assert result["windows"][2]["start_seconds"] == start / SAMPLE_RATE


def test_default_hop_is_the_training_crop(classifier, test_files):
    waveform = torch.cat(
        [load_audio(path) for path in list(test_files.values())[:4]]
    )
    result = classifier.classify_waveform(waveform)
    assert len(result["windows"]) == len(
        window_bounds(waveform.shape[0], 24000, 24000)
    )
    assert [
        w["end_seconds"] - w["start_seconds"] for w in result["windows"]
    ] == [CROP_SECONDS] * len(result["windows"])


def test_a_window_given_without_hop_tiles_the_recording(classifier):
    result = classifier.classify_waveform(
        torch.randn(3 * SAMPLE_RATE) * 0.1, window_seconds=1.0
    )
    assert [
        (w["start_seconds"], w["end_seconds"]) for w in result["windows"]
    ] == [(0, 1), (1, 2), (2, 3)]


def test_stereo_44k_file_is_mixed_to_mono_and_resampled(
    classifier, test_files, tmp_path
):
    upsampled = torchaudio.functional.resample(
        load_audio(next(iter(test_files.values()))), SAMPLE_RATE, 44100
    )
    stereo_path, mono_path = (
        str(tmp_path / "stereo_44k.wav"),
        str(tmp_path / "mono_16k.wav"),
    )
    stereo = torch.stack(
        [upsampled * 1.5, upsampled * 0.5], dim=1
    )  # (T, 2): channel mean = upsampled
    soundfile.write(stereo_path, stereo.numpy(), 44100, subtype="FLOAT")
    soundfile.write(
        mono_path,
        torchaudio.functional.resample(upsampled, 44100, SAMPLE_RATE).numpy(),
        SAMPLE_RATE,
        subtype="FLOAT",
    )
    result, reference = (
        classifier.classify_file(stereo_path),
        classifier.classify_file(mono_path),
    )
    assert result["duration_seconds"] == reference["duration_seconds"]
    np.testing.assert_allclose(
        probability_vector(result, classifier.labels),
        probability_vector(reference, classifier.labels),
        atol=1e-5,
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "removed", ["downstream.ckpt", "input_norm.ckpt", "label_encoder.txt"]
)
def test_missing_model_file_is_named(model_folder, tmp_path, removed):
    broken = shutil.copytree(model_folder, tmp_path / "model")
    os.remove(broken / removed)
    with pytest.raises(
        ModelFolderError, match=removed.replace(".", r"\.") + ".*re-export"
    ):
        EmotionClassifier.from_hparams(source=broken, savedir=broken)


def test_unreadable_files_are_skipped_and_reported(
    classifier, test_files, tmp_path
):
    empty, garbage = write_broken_audio(str(tmp_path))
    good = next(iter(test_files.values()))
    results, failures = classify_files(
        classifier, [empty, good, garbage, str(tmp_path / "missing.wav")]
    )
    assert [r["file"] for r in results] == [good]
    assert [f["file"] for f in failures] == [
        empty,
        garbage,
        str(tmp_path / "missing.wav"),
    ]
    assert "empty" in failures[0]["error"] and empty in failures[0]["error"]
    assert garbage in failures[1]["error"]


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def audio_folder(test_files, tmp_path_factory):
    """Three test utterances and one broken file in nested folders."""
    folder = tmp_path_factory.mktemp("to_classify")
    (folder / "nested").mkdir()
    paths = list(test_files.values())[:3]
    for index, path in enumerate(paths):
        shutil.copyfile(
            path, folder / ("nested" if index else ".") / f"utt{index}.wav"
        )
    write_header_only_wav(str(folder / "nested" / "broken.wav"))
    return folder


def test_cli_writes_json_with_a_row_per_file(
    model_folder, classifier, audio_folder, tmp_path, capsys
):
    output = tmp_path / "out.json"
    assert (
        infer.main([model_folder, str(audio_folder), "--output", str(output)])
        == 0
    )
    document = json.loads(output.read_text())
    assert document["num_files"] == 4 and document["num_failed"] == 1
    assert sorted(os.path.basename(r["file"]) for r in document["results"]) == [
        "utt0.wav",
        "utt1.wav",
        "utt2.wav",
    ]
    assert document["failed"][0]["file"].endswith("broken.wav")
    first = next(
        r for r in document["results"] if r["file"].endswith("utt0.wav")
    )
    assert (
        first["probabilities"]
        == classifier.classify_file(first["file"])["probabilities"]
    )
    printed = capsys.readouterr()
    assert "utt0.wav" in printed.out and "FAILED" in printed.out
    assert "broken.wav" in printed.err and "empty" in printed.err


def test_cli_writes_csv_with_a_row_per_file(
    model_folder, classifier, audio_folder, tmp_path
):
    output = tmp_path / "out.csv"
    assert (
        infer.main([model_folder, str(audio_folder), "--output", str(output)])
        == 0
    )
    with open(output, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert set(classifier.labels) < set(rows[0])
    failed = [row for row in rows if row["error"]]
    assert len(failed) == 1 and failed[0]["file"].endswith("broken.wav")
    for row in rows:
        if not row["error"]:
            probabilities = [float(row[label]) for label in classifier.labels]
            assert (
                row["label"] == classifier.labels[int(np.argmax(probabilities))]
            )
            assert sum(probabilities) == pytest.approx(1, abs=1e-5)


def test_cli_fails_when_every_file_fails(model_folder, tmp_path, capsys):
    write_broken_audio(str(tmp_path))
    assert infer.main([model_folder, str(tmp_path)]) == 1
    assert "0 of 2 files classified" in capsys.readouterr().out


def test_cli_reports_a_broken_model_folder_without_traceback(
    model_folder, audio_folder, tmp_path, capsys
):
    broken = shutil.copytree(model_folder, tmp_path / "model")
    os.remove(broken / "layer_combiner.ckpt")
    assert infer.main([str(broken), str(audio_folder)]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("error: ")
        and "layer_combiner.ckpt" in error
        and "Traceback" not in error
    )


# --------------------------------------------------------------------------- SSL upstream


@pytest.fixture(scope="module")
def untrained_wavlm_split(tmp_path_factory):
    """A split of superb_ssl.yaml on a tiny random WavLM, checkpointed untrained."""
    folder = tmp_path_factory.mktemp("wavlm_split")
    tiny = save_tiny_model(
        str(folder / "tiny_wavlm"), kind="wavlm", num_layers=2
    )
    with open(
        os.path.join(REPO_ROOT, "hparams", "superb_ssl.yaml"),
        encoding="utf-8",
    ) as handle:
        hparams = load_hyperpyyaml(
            handle,
            {
                "data_folder": str(folder),
                "output_folder": str(folder / "run"),
                "ssl_source": tiny,
                "input_dim": 32,
                "num_upstream_layers": 3,
                "num_classes": 3,
            },
        )
    torch.nn.init.normal_(hparams["layer_combiner"].layer_weights)
    checkpoint = hparams["checkpointer"].save_checkpoint()
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(["angry", "neutral", "sad"])
    encoder.save(str(folder / "label_encoder.txt"))
    return hparams, checkpoint, str(folder / "label_encoder.txt"), tiny


def reference_probabilities(hparams, waveform):
    """The split's modules applied directly: upstream -> combiner -> downstream -> softmax."""
    upstream = hparams["upstream"]()
    hparams["downstream"].eval()
    with torch.no_grad():
        feats, lens = upstream(waveform[None])
        logits = hparams["downstream"](hparams["layer_combiner"](feats), lens)
    return torch.softmax(logits, dim=-1)[0].numpy()


def test_copied_ssl_upstream_makes_a_portable_model_folder(
    untrained_wavlm_split, tmp_path
):
    hparams, checkpoint, encoder_path, tiny = untrained_wavlm_split
    exported = export_model_folder(
        hparams,
        checkpoint,
        encoder_path,
        str(tmp_path / "model"),
        copy_upstream=True,
    )
    moved = shutil.move(exported, tmp_path / "elsewhere")
    with open(
        os.path.join(moved, "hyperparams.yaml"), encoding="utf-8"
    ) as handle:
        assert (
            tiny not in handle.read()
        )  # nothing points back to the original upstream
    loaded = EmotionClassifier.from_hparams(
        source=moved, savedir=moved, run_opts={"device": "cpu"}
    )
    waveform = torch.randn(SAMPLE_RATE) * 0.1
    probabilities, indices, labels = loaded.classify_batch(waveform[None])
    np.testing.assert_allclose(
        probabilities[0].numpy(),
        reference_probabilities(hparams, waveform),
        atol=1e-5,
    )
    assert labels == [["angry", "neutral", "sad"][int(indices[0])]]


def test_ssl_upstream_is_referenced_by_absolute_path(
    untrained_wavlm_split, tmp_path
):
    hparams, checkpoint, encoder_path, tiny = untrained_wavlm_split
    exported = export_model_folder(
        hparams, checkpoint, encoder_path, str(tmp_path / "model")
    )
    with open(
        os.path.join(exported, "hyperparams.yaml"), encoding="utf-8"
    ) as handle:
        assert f"source: {json.dumps(os.path.abspath(tiny))}" in handle.read()
    assert not os.path.exists(os.path.join(exported, "upstream"))
    check_model_folder(exported)
    moved_upstream = shutil.move(tiny, str(tmp_path / "moved_upstream"))
    try:
        with pytest.raises(
            ModelFolderError,
            match="upstream model folder .* is missing.*copy_upstream=True",
        ):
            EmotionClassifier.from_hparams(source=exported, savedir=exported)
    finally:
        shutil.move(moved_upstream, tiny)


@pytest.mark.parametrize(
    "hparams_file", ["hparams/shiftformer.yaml", "hparams/speechformer.yaml"]
)
def test_table_iv_models_export_and_reproduce_their_test_probabilities(
    hparams_file, corpus, tmp_path
):
    # The Table IV downstream models through their own hparams files (upstream picked by
    # build_upstream), exported, reloaded and classified file by file. Features on the fly:
    # the float16 cache would shift these deeper models' probabilities by ~2e-3.
    output = str(tmp_path / "run")
    run_in_process(
        "recipes/custom/train.py",
        hparams_file,
        "--upstream_kind=fbank",
        "--use_cache=False",
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--output_folder={output}",
        "--number_of_epochs=2",
        "--batch_size=4",
        "--lr=0.01",
        f"--crop_seconds={CROP_SECONDS}",
    )
    folder = os.path.join(output, "main", "model")
    with open(
        os.path.join(folder, "hyperparams.yaml"), encoding="utf-8"
    ) as handle:
        text = handle.read()
    assert "upstream: !apply:ser_modules.upstreams.build_upstream" in text
    assert f"model: {os.path.basename(hparams_file)[:-5]}" in text
    loaded = EmotionClassifier.from_hparams(
        source=folder, savedir=folder, run_opts={"device": "cpu"}
    )
    outcome = read_test_outcome(output)
    with open(
        os.path.join(output, "prepared", "test.csv"), encoding="utf-8"
    ) as handle:
        paths = {
            row["ID"]: row["wav"].replace("$data_root", corpus)
            for row in csv.DictReader(handle)
        }
    got = np.stack(
        [
            probability_vector(
                loaded.classify_file(paths[utterance_id]), outcome["labels"]
            )
            for utterance_id in outcome["ids"]
        ]
    )
    np.testing.assert_allclose(
        got, np.array(outcome["probabilities"]), atol=1e-4
    )


# --------------------------------------------------------------------------- untrusted folders and bad inputs


class PicklePayload:
    """Unpickling this object runs a command (what a malicious checkpoint would carry)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_model_folder_whose_yaml_runs_a_command_is_refused_without_running_it(
    model_folder, audio_folder, tmp_path, capsys
):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    marker = tmp_path / "executed"
    with open(folder / "hyperparams.yaml", "a", encoding="utf-8") as handle:
        handle.write(f'\nhello: !apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ModelFolderError, match="os.system"):
        EmotionClassifier.from_hparams(source=str(folder), savedir=str(folder))
    assert infer.main([str(folder), str(audio_folder)]) == 2
    assert "os.system" in capsys.readouterr().err
    assert not marker.exists()


def test_a_checkpoint_holding_a_pickle_payload_is_refused_without_running_it(
    model_folder, tmp_path
):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    marker = tmp_path / "executed"
    state = torch.load(folder / "downstream.ckpt", weights_only=True)
    state["payload"] = PicklePayload(marker)
    torch.save(state, folder / "downstream.ckpt")
    with pytest.raises(ModelFolderError, match="downstream.ckpt"):
        EmotionClassifier.from_hparams(source=str(folder), savedir=str(folder))
    assert not marker.exists()


def test_a_parameter_file_of_another_module_is_refused_naming_it(
    model_folder, tmp_path
):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    shutil.copyfile(folder / "layer_combiner.ckpt", folder / "downstream.ckpt")
    with pytest.raises(ModelFolderError, match=r"downstream.ckpt does not fit"):
        EmotionClassifier.from_hparams(source=str(folder), savedir=str(folder))


def test_a_label_encoder_with_fewer_labels_than_model_outputs_is_refused(
    model_folder, classifier, tmp_path
):
    folder = shutil.copytree(model_folder, tmp_path / "model")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(classifier.labels[:-1])
    encoder.save(str(folder / "label_encoder.txt"))
    with pytest.raises(ModelFolderError, match="label encoder lists 3 labels"):
        EmotionClassifier.from_hparams(source=str(folder), savedir=str(folder))


def test_huge_float_samples_and_nan_outputs_are_failed_rows_not_predictions(
    classifier, test_files, tmp_path, monkeypatch
):
    huge = str(tmp_path / "huge.wav")
    soundfile.write(
        huge,
        np.full(16000, 1e20, dtype=np.float32),
        SAMPLE_RATE,
        subtype="FLOAT",
    )
    good = next(iter(test_files.values()))
    results, failures = classify_files(classifier, [huge, good])
    assert [f["file"] for f in failures] == [huge] and "huge.wav" in failures[
        0
    ]["error"]
    assert len(results) == 1
    monkeypatch.setattr(
        classifier.mods.downstream,
        "forward",
        lambda feats, lens: torch.full((feats.shape[0], 4), float("nan")),
    )
    results, failures = classify_files(classifier, [good])
    assert (
        results == []
        and failures[0]["file"] == good
        and "NaN" in failures[0]["error"]
    )
