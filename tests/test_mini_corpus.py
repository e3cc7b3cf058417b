"""Specification of the synthetic mini emotional-speech corpus (ser_modules/mini_corpus.py)."""

import collections
import csv
import os
import re

import librosa
import numpy as np
import pytest
import soundfile
from prepare_helpers import load_recipe_module
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ser_modules import mini_corpus
from ser_modules.manifest import read_csv
from ser_modules.mini_corpus import generate_mini_corpus

EMOTIONS = ("neutral", "happy", "sad", "angry")
# A corpus of 4 short utterances, for the tests of determinism and skipping.
TINY = {
    "num_speakers": 2,
    "utterances_per_class": 1,
    "emotions": ("neutral", "sad"),
    "duration_range": (1.0, 1.2),
}


def _files(folder):
    """Relative path -> bytes of every file below ``folder``."""
    contents = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                contents[os.path.relpath(path, folder)] = handle.read()
    return contents


def _read_labels(labels_path):
    with open(labels_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The default corpus (6 speakers x 4 emotions x 8 utterances)."""
    folder = tmp_path_factory.mktemp("mini_corpus")
    labels_path = generate_mini_corpus(str(folder))
    return str(folder), _read_labels(labels_path)


@pytest.fixture(scope="module")
def measurements(corpus):
    """Per-utterance acoustic measurements of the default corpus, computed once."""
    folder, rows = corpus
    measured = []
    for row in rows:
        waveform, sample_rate = soundfile.read(
            os.path.join(folder, row["path"]), dtype="float32"
        )
        frame_rms = librosa.feature.rms(
            y=waveform, frame_length=400, hop_length=160
        )[0]  # (frames,)
        f0 = librosa.yin(
            waveform,
            fmin=60,
            fmax=500,
            sr=sample_rate,
            frame_length=1024,
            hop_length=160,
        )
        # Loud frames (relative to the utterance, since sad speech can be quiet) are voiced.
        voiced = frame_rms[: f0.size] > 0.25 * np.percentile(frame_rms, 90)
        semitones = 12.0 * np.log2(f0[voiced])
        # Syllable nuclei = runs of frames above a quarter of the loud-frame level.
        envelope = librosa.feature.rms(
            y=waveform, frame_length=320, hop_length=80
        )[0]
        _, num_syllables = ndimage.label(
            envelope > 0.25 * np.percentile(envelope, 90)
        )
        power = (
            np.abs(librosa.stft(waveform, n_fft=512, hop_length=160)) ** 2
        )  # (freq, frames)
        frequencies = librosa.fft_frequencies(sr=sample_rate, n_fft=512)
        high = power[(frequencies >= 1000) & (frequencies < 4000)].sum()
        low = power[frequencies < 1000].sum()
        log_mel = librosa.power_to_db(
            librosa.feature.melspectrogram(
                y=waveform, sr=sample_rate, n_fft=400, hop_length=160, n_mels=40
            )
        )  # (40, frames)
        measured.append(
            {
                "emotion": row["emotion"],
                "speaker": row["speaker"],
                "level_db": 20.0 * np.log10(np.sqrt(np.mean(waveform**2))),
                "f0_semitones": float(np.median(semitones)),
                "f0_range": float(
                    np.subtract(*np.percentile(semitones, [90, 10]))
                ),
                "syllable_rate": num_syllables * sample_rate / waveform.size,
                "high_band_db": 10.0 * np.log10(high / low),
                "log_mel_stats": np.concatenate(
                    [log_mel.mean(axis=1), log_mel.std(axis=1)]
                ),
            }
        )
    return measured


def _class_means(measured, key):
    """Mean of ``key`` per emotion, after removing each speaker's mean (speaker normalisation)."""
    by_speaker = collections.defaultdict(list)
    for item in measured:
        by_speaker[item["speaker"]].append(item[key])
    speaker_mean = {
        speaker: np.mean(values) for speaker, values in by_speaker.items()
    }
    by_emotion = collections.defaultdict(list)
    for item in measured:
        by_emotion[item["emotion"]].append(
            item[key] - speaker_mean[item["speaker"]]
        )
    return {
        emotion: float(np.mean(values))
        for emotion, values in by_emotion.items()
    }


def test_same_options_write_byte_identical_files(tmp_path):
    generate_mini_corpus(str(tmp_path / "first"), **TINY)
    generate_mini_corpus(str(tmp_path / "second"), **TINY)
    first, second = _files(tmp_path / "first"), _files(tmp_path / "second")
    assert sorted(first) == sorted(second)
    assert first == second


def test_another_seed_gives_other_audio(tmp_path):
    generate_mini_corpus(str(tmp_path / "seed0"), seed=0, **TINY)
    generate_mini_corpus(str(tmp_path / "seed1"), seed=1, **TINY)
    wav = "neutral/spk01_neutral_000.wav"
    assert (tmp_path / "seed0" / wav).read_bytes() != (
        tmp_path / "seed1" / wav
    ).read_bytes()


def test_labels_list_every_utterance_with_emotion_speaker_and_gender(corpus):
    folder, rows = corpus
    assert list(rows[0]) == ["path", "emotion", "speaker", "gender"]
    assert len(rows) == 6 * 4 * 8
    for row in rows:
        assert re.fullmatch(
            rf"{row['emotion']}/{row['speaker']}_{row['emotion']}_\d{{3}}\.wav",
            row["path"],
        )
        assert os.path.isfile(os.path.join(folder, row["path"]))
    counts = collections.Counter(
        (row["speaker"], row["emotion"]) for row in rows
    )
    assert set(counts.values()) == {8}
    assert {emotion for _, emotion in counts} == set(EMOTIONS)
    genders = {row["speaker"]: row["gender"] for row in rows}
    assert len(genders) == 6
    assert collections.Counter(genders.values()) == {"F": 3, "M": 3}
    assert (
        len({(row["speaker"], row["gender"]) for row in rows}) == 6
    )  # one gender per speaker


def test_audio_is_16khz_mono_pcm16_within_the_duration_range(corpus):
    folder, rows = corpus
    for row in rows:
        info = soundfile.info(os.path.join(folder, row["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (
            16000,
            1,
            "PCM_16",
        )
        assert 1.5 <= info.duration <= 3.5


def test_audio_does_not_clip(corpus):
    folder, rows = corpus
    peaks = [
        np.abs(soundfile.read(os.path.join(folder, row["path"]))[0]).max()
        for row in rows
    ]
    assert max(peaks) < 0.99


def test_angry_and_happy_are_louder_than_neutral_and_neutral_louder_than_sad(
    measurements,
):
    level = _class_means(measurements, "level_db")
    assert min(level["angry"], level["happy"]) > level["neutral"] + 2.0
    assert level["neutral"] > level["sad"] + 2.0
    assert level["angry"] > level["happy"]


def test_angry_and_happy_have_higher_f0_than_neutral_and_neutral_higher_than_sad(
    measurements,
):
    f0 = _class_means(measurements, "f0_semitones")
    assert min(f0["angry"], f0["happy"]) > f0["neutral"] + 1.0
    assert f0["neutral"] > f0["sad"] + 0.5


def test_happy_has_the_widest_and_sad_the_narrowest_f0_range(measurements):
    f0_range = _class_means(measurements, "f0_range")
    assert max(f0_range, key=f0_range.get) == "happy"
    assert min(f0_range, key=f0_range.get) == "sad"


def test_sad_is_slower_than_neutral_which_is_slower_than_happy_and_angry(
    measurements,
):
    rate = _class_means(measurements, "syllable_rate")
    assert rate["sad"] < rate["neutral"] < min(rate["happy"], rate["angry"])


def test_angry_voice_has_a_flatter_spectrum_than_neutral(measurements):
    high_band = _class_means(measurements, "high_band_db")
    assert high_band["angry"] > high_band["neutral"] + 1.0


def test_speaker_f0_differences_exceed_emotion_f0_differences(measurements):
    # Female and male F0 differ more than emotions do: F0 alone must not give away the class.
    speaker_f0 = collections.defaultdict(list)
    for item in measurements:
        speaker_f0[item["speaker"]].append(item["f0_semitones"])
    speaker_spread = np.ptp([np.mean(values) for values in speaker_f0.values()])
    emotion_spread = np.ptp(
        list(_class_means(measurements, "f0_semitones").values())
    )
    assert speaker_spread > 2.0 * emotion_spread


def test_log_mel_statistics_classifier_learns_emotions_across_speakers_but_not_perfectly(
    measurements,
):
    features = np.stack(
        [item["log_mel_stats"] for item in measurements]
    )  # (N, 80)
    labels = np.array([item["emotion"] for item in measurements])
    speakers = [item["speaker"] for item in measurements]
    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000)
    )
    predictions = cross_val_predict(
        classifier, features, labels, groups=speakers, cv=GroupKFold(n_splits=6)
    )
    accuracy = float(np.mean(predictions == labels))
    assert 0.45 < accuracy < 0.95  # chance is 0.25


def test_generation_is_skipped_when_the_options_match(tmp_path, monkeypatch):
    generate_mini_corpus(str(tmp_path), **TINY)
    before = _files(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError(
            "synthesize_utterance called although the corpus is up to date"
        )

    monkeypatch.setattr(mini_corpus, "synthesize_utterance", fail)
    generate_mini_corpus(str(tmp_path), **TINY)
    assert _files(tmp_path) == before


def test_changed_seed_regenerates_the_audio(tmp_path):
    generate_mini_corpus(str(tmp_path / "corpus"), seed=0, **TINY)
    generate_mini_corpus(str(tmp_path / "corpus"), seed=1, **TINY)
    generate_mini_corpus(str(tmp_path / "reference"), seed=1, **TINY)
    assert _files(tmp_path / "corpus") == _files(tmp_path / "reference")


def test_missing_wav_is_regenerated(tmp_path):
    labels_path = generate_mini_corpus(str(tmp_path), **TINY)
    wav = tmp_path / _read_labels(labels_path)[0]["path"]
    original = wav.read_bytes()
    wav.unlink()
    generate_mini_corpus(str(tmp_path), **TINY)
    assert wav.read_bytes() == original


def test_fewer_utterances_remove_the_wavs_no_longer_listed(tmp_path):
    generate_mini_corpus(str(tmp_path), **{**TINY, "utterances_per_class": 2})
    labels_path = generate_mini_corpus(str(tmp_path), **TINY)
    listed = {row["path"] for row in _read_labels(labels_path)}
    on_disk = {path for path in _files(tmp_path) if path.endswith(".wav")}
    assert on_disk == listed
    assert len(listed) == 2 * 2 * 1


def test_unknown_emotion_is_rejected_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="neutral"):
        generate_mini_corpus(str(tmp_path), emotions=("neutral", "bored"))


def test_command_line_writes_the_same_corpus_as_the_function(tmp_path, capsys):
    argv = [
        str(tmp_path / "cli"),
        "--seed",
        "3",
        "--num_speakers",
        "2",
        "--utterances_per_class",
        "1",
    ]
    mini_corpus.main(
        argv
        + ["--emotions", "neutral", "sad", "--duration_range", "1.0", "1.2"]
    )
    assert capsys.readouterr().out.strip() == os.path.join(
        str(tmp_path / "cli"), "labels.csv"
    )
    generate_mini_corpus(str(tmp_path / "function"), seed=3, **TINY)
    assert _files(tmp_path / "cli") == _files(tmp_path / "function")


def test_corpus_goes_through_the_custom_corpus_preparation_into_speaker_folds(
    corpus, tmp_path
):
    folder, rows = corpus
    custom = load_recipe_module("recipes/custom/custom_prepare.py")
    manifests = custom.prepare_custom(
        folder,
        str(tmp_path),
        labels_csv="labels.csv",
        split="speaker_kfold",
        n_folds=3,
    )
    tested = []
    for fold in manifests.values():
        test = read_csv(fold["test"])
        train_speakers = {
            row["spk_id"]
            for row in read_csv(fold["train"]) + read_csv(fold["valid"])
        }
        assert not train_speakers & {row["spk_id"] for row in test}
        tested += test
    assert sorted(
        (row["emo"], row["spk_id"], row["gender"]) for row in tested
    ) == sorted((row["emotion"], row["speaker"], row["gender"]) for row in rows)
