"""Specification of the MELD preparation (recipes/MELD/meld_prepare.py).

The fixture is a miniature ``MELD.Raw`` with the real layout: the three annotation CSVs
(UTF-8 BOM, CRLF, quoted fields with commas, quotes and non-ASCII text, times such as
``"00:16:16,059"``) and real mp4 clips written with PyAV (a 16x16 mpeg4 video stream plus
AAC audio at 48 kHz, stereo or 5.1, holding 0.5 s sines), one clip missing, one made of
random bytes and one without an audio stream.
"""

import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from prepare_helpers import (
    Interrupted,
    assert_same_files,
    load_recipe_module,
    run_script,
)

from ser_modules.manifest import read_csv

SCRIPT = "recipes/MELD/meld_prepare.py"
meld_prepare = load_recipe_module(SCRIPT)

CLIP_SECONDS = 0.5
AAC_FRAME_SECONDS = 1024 / 48000
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
# (split folder, clip name) -> (layout, amplitude of each channel, sine frequency in Hz)
CLIPS = {
    ("train_splits", "dia0_utt0"): ("stereo", (0.6, 0.2), 440.0),
    ("train_splits", "dia0_utt1"): (
        "5.1",
        (0.0, 0.0, 0.5, 0.0, 0.0, 0.0),
        880.0,
    ),  # centre channel only
    ("dev_splits_complete", "dia0_utt0"): ("stereo", (0.4, 0.4), 660.0),
    ("output_repeated_splits_test", "dia0_utt0"): ("stereo", (0.3, 0.5), 550.0),
    ("output_repeated_splits_test", "dia2_utt3"): ("5.1", (0.2,) * 6, 330.0),
}
TRAIN_CSV = (
    "\r\n".join(
        [
            HEADER,
            '1,"Oh, I\u2019m ""fine""",Chandler,Joy,positive,0,0,8,21,"00:16:16,059","00:16:21,731"',
            '2,Caf\u00e9 for the na\u00efve,Monica,neutral,neutral,0,1,8,21,"00:16:21,940","00:16:23,442"',
            '3,"Where\'s my, uh, stuff?",Joey,anger,negative,1,0,3,2,"00:01:01,000","00:01:02,000"',
            '4,Broken clip,Ross,surprise,positive,1,1,3,2,"00:01:02,000","00:01:03,000"',
        ]
    )
    + "\r\n"
)
DEV_CSV = (
    "\r\n".join(
        [
            HEADER,
            '1,Hi.,Rachel,sadness,negative,0,0,1,1,"00:00:01,000","00:00:02,000"',
            '2,(silence),Phoebe,fear,negative,1,0,1,1,"00:00:02,000","00:00:03,000"',
        ]
    )
    + "\r\n"
)
TEST_CSV = (
    "\r\n".join(
        [
            HEADER,
            '1,"Yeah, right.",Ross,disgust,negative,0,0,2,4,"00:10:00,000","00:10:01,000"',
            '2,Wow!,Monica,Surprise,positive,2,3,2,4,"00:10:05,000","00:10:06,000"',
        ]
    )
    + "\r\n"
)


def write_clip(
    path,
    layout=None,
    channel_amplitudes=(),
    frequency=440.0,
    seconds=CLIP_SECONDS,
):
    """Write an mp4 with a tiny mpeg4 video stream and, unless ``layout`` is None, AAC audio."""
    rate = 48000
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        audio = (
            container.add_stream("aac", rate=rate, layout=layout)
            if layout
            else None
        )
        for index in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(
                np.zeros((16, 16, 3), np.uint8), format="rgb24"
            )
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is None:
            return
        time = np.arange(int(seconds * rate)) / rate
        sine = np.sin(2 * np.pi * frequency * time)
        planes = np.stack(
            [amplitude * sine for amplitude in channel_amplitudes]
        ).astype(np.float32)  # (C, T)
        for start in range(0, planes.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planes[:, start : start + 1024]),
                format="fltp",
                layout=layout,
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


@pytest.fixture(scope="module")
def meld_root(tmp_path_factory):
    """A miniature MELD.Raw with the real layout and its traps."""
    root = tmp_path_factory.mktemp("corpus") / "MELD.Raw"
    for folder in (
        "train_splits",
        "dev_splits_complete",
        "output_repeated_splits_test",
    ):
        (root / folder).mkdir(parents=True)
    for (folder, name), (layout, amplitudes, frequency) in CLIPS.items():
        write_clip(root / folder / f"{name}.mp4", layout, amplitudes, frequency)
    # train dia1_utt0 is missing; dia1_utt1 is random bytes; dev dia1_utt0 has no audio.
    (root / "train_splits" / "dia1_utt1.mp4").write_bytes(
        np.random.default_rng(0).bytes(3000)
    )
    write_clip(root / "dev_splits_complete" / "dia1_utt0.mp4", layout=None)
    (root / "train_sent_emo.csv").write_bytes(
        b"\xef\xbb\xbf" + TRAIN_CSV.encode("utf-8")
    )
    (root / "dev_sent_emo.csv").write_bytes(DEV_CSV.encode("utf-8"))
    (root / "test_sent_emo.csv").write_bytes(TEST_CSV.encode("utf-8"))
    return root


@pytest.fixture(scope="module")
def prepared(meld_root, tmp_path_factory):
    """One serial preparation of the fixture corpus, shared by the read-only tests."""
    save_folder = tmp_path_factory.mktemp("prepared")
    splits = meld_prepare.prepare_meld(
        str(meld_root), str(save_folder), num_workers=1
    )
    return save_folder, splits


def modification_times(folder):
    """``{path: st_mtime_ns}`` of every file below ``folder``."""
    return {
        path: os.stat(path).st_mtime_ns
        for path in Path(folder).rglob("*")
        if path.is_file()
    }


def dominant_frequency(samples, sample_rate=16000):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / sample_rate)[np.argmax(spectrum)]


def rms(samples):
    return float(np.sqrt(np.mean(np.asarray(samples, dtype=np.float64) ** 2)))


def test_returns_the_official_split_with_dev_as_valid(prepared):
    save_folder, splits = prepared
    assert splits == {
        "main": {
            name: str(save_folder / f"{name}.csv")
            for name in ("train", "valid", "test")
        }
    }


def test_manifests_hold_the_decodable_clips_with_labels_speakers_and_text(
    prepared,
):
    save_folder, _ = prepared
    train, valid, test = (
        read_csv(save_folder / f"{name}.csv")
        for name in ("train", "valid", "test")
    )
    assert list(train[0]) == [
        "ID",
        "duration",
        "wav",
        "emo",
        "spk_id",
        "sentiment",
        "dialogue",
        "turn",
        "text",
    ]
    assert [
        (row["ID"], row["emo"], row["spk_id"], row["sentiment"])
        for row in train
    ] == [
        ("train_dia0_utt0", "joy", "Chandler", "positive"),
        ("train_dia0_utt1", "neutral", "Monica", "neutral"),
    ]
    assert [(row["ID"], row["emo"], row["spk_id"]) for row in valid] == [
        ("dev_dia0_utt0", "sadness", "Rachel")
    ]
    assert [
        (row["ID"], row["emo"], row["dialogue"], row["turn"]) for row in test
    ] == [
        ("test_dia0_utt0", "disgust", "test_dia0", "0"),
        ("test_dia2_utt3", "surprise", "test_dia2", "3"),
    ]
    assert [row["text"] for row in train] == [
        'Oh, I\u2019m "fine"',
        "Caf\u00e9 for the na\u00efve",
    ]
    assert train[1]["wav"] == "$prep_root/wav/train/dia0_utt1.wav"


def test_missing_broken_and_silent_clips_are_listed_with_their_reason(prepared):
    save_folder, _ = prepared
    lines = (
        (save_folder / "skipped_files.txt")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    reasons = dict(line.split("\t") for line in lines)
    assert sorted(reasons) == [
        "dev_splits_complete/dia1_utt0.mp4",
        "train_splits/dia1_utt0.mp4",
        "train_splits/dia1_utt1.mp4",
    ]
    assert reasons["train_splits/dia1_utt0.mp4"] == "missing"
    assert (
        reasons["train_splits/dia1_utt1.mp4"]
        == "undecodable (Invalid data found when processing input)"
    )
    assert reasons["dev_splits_complete/dia1_utt0.mp4"] == "no audio stream"


def test_wavs_are_16khz_mono_with_the_clip_duration_and_frequency(prepared):
    save_folder, _ = prepared
    rows = [
        row
        for name in ("train", "valid", "test")
        for row in read_csv(save_folder / f"{name}.csv")
    ]
    split_of = {
        "train_splits": "train",
        "dev_splits_complete": "dev",
        "output_repeated_splits_test": "test",
    }
    expected_frequency = {
        f"{split_of[folder]}_{name}": frequency
        for (folder, name), (_, _, frequency) in CLIPS.items()
    }
    for row in rows:
        path = row["wav"].replace("$prep_root", str(save_folder))
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (
            16000,
            1,
            "PCM_16",
        )
        assert abs(info.duration - CLIP_SECONDS) <= AAC_FRAME_SECONDS
        assert float(row["duration"]) == pytest.approx(info.duration, abs=1e-5)
        samples, _ = soundfile.read(path)
        assert dominant_frequency(samples) == pytest.approx(
            expected_frequency[row["ID"]], abs=4.0
        )


def test_downmix_of_stereo_equals_the_mean_of_the_channels(meld_root):
    clip = meld_root / "train_splits" / "dia0_utt0.mp4"  # left 0.6, right 0.2
    downmix = meld_prepare.decode_audio(str(clip), "downmix").astype(np.int32)
    mean = meld_prepare.decode_audio(str(clip), "mean").astype(np.int32)
    assert downmix.shape == mean.shape
    assert np.abs(downmix - mean).max() <= 2
    assert rms(downmix / 32768) == pytest.approx(0.4 / np.sqrt(2), rel=0.05)


def test_downmix_of_5_1_gives_the_centre_channel_its_standard_weight(meld_root):
    # FFmpeg's matrix: centre 1, front left/right 1/sqrt(2), surround left/right 1/2, LFE 0,
    # normalised to sum 1 for integer output: the centre weighs 1 / (2 + sqrt(2)) = 0.29.
    clip = (
        meld_root / "train_splits" / "dia0_utt1.mp4"
    )  # 0.5 sine in the centre channel only
    downmix = meld_prepare.decode_audio(str(clip), "downmix")
    mean = meld_prepare.decode_audio(str(clip), "mean")
    centre_rms = 0.5 / np.sqrt(2)
    assert rms(downmix / 32768) == pytest.approx(
        centre_rms / (2 + np.sqrt(2)), rel=0.05
    )
    assert rms(mean / 32768) == pytest.approx(centre_rms / 6, rel=0.05)


def test_rerun_with_the_same_options_does_nothing(
    meld_root, prepared, monkeypatch
):
    save_folder, splits = prepared
    before = modification_times(save_folder)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the preparation should have been skipped")

    monkeypatch.setattr(meld_prepare, "read_meld_annotations", must_not_run)
    monkeypatch.setattr(meld_prepare, "decode_audio", must_not_run)
    assert (
        meld_prepare.prepare_meld(
            str(meld_root), str(save_folder), num_workers=1
        )
        == splits
    )
    assert modification_times(save_folder) == before


def test_unfinished_preparation_decodes_only_clips_without_a_wav(
    meld_root, tmp_path, monkeypatch
):
    meld_prepare.prepare_meld(str(meld_root), str(tmp_path), num_workers=1)
    manifests_before = {
        name: (tmp_path / name).read_bytes()
        for name in ("train.csv", "valid.csv", "test.csv")
    }
    wavs = sorted((tmp_path / "wav").rglob("*.wav"))
    mtimes = {path: os.stat(path).st_mtime_ns for path in wavs}
    removed = tmp_path / "wav" / "test" / "dia0_utt0.wav"
    removed.unlink()
    (
        tmp_path / "prepare_options.json"
    ).unlink()  # as if the run had been killed before its end

    decoded = []
    original = meld_prepare.decode_audio

    def recording_decode(path, *args):
        decoded.append(path)
        return original(path, *args)

    monkeypatch.setattr(meld_prepare, "decode_audio", recording_decode)
    meld_prepare.prepare_meld(str(meld_root), str(tmp_path), num_workers=1)

    assert sorted(
        Path(path).relative_to(meld_root).as_posix() for path in decoded
    ) == [
        "dev_splits_complete/dia1_utt0.mp4",  # skipped clips are retried
        "output_repeated_splits_test/dia0_utt0.mp4",
        "train_splits/dia1_utt1.mp4",
    ]
    assert all(
        os.stat(path).st_mtime_ns == mtimes[path]
        for path in wavs
        if path != removed
    )
    assert {
        name: (tmp_path / name).read_bytes() for name in manifests_before
    } == manifests_before


def test_interrupted_conversion_leaves_no_partial_wav_and_resumes_to_the_same_result(
    meld_root, tmp_path, monkeypatch
):
    reference = tmp_path / "uninterrupted"
    meld_prepare.prepare_meld(str(meld_root), str(reference), num_workers=1)

    original_write = soundfile.write
    calls = []

    def write_then_die_on_second_clip(path, samples, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            original_write(
                path, samples[: len(samples) // 2], *args, **kwargs
            )  # half a file on disk
            raise Interrupted("simulated kill while writing the second wav")
        return original_write(path, samples, *args, **kwargs)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(soundfile, "write", write_then_die_on_second_clip)
    with pytest.raises(Interrupted):
        meld_prepare.prepare_meld(
            str(meld_root), str(interrupted), num_workers=1
        )
    monkeypatch.undo()

    left = sorted(
        path.relative_to(interrupted).as_posix()
        for path in interrupted.rglob("*")
        if path.is_file()
    )
    assert left == ["wav/conversion.json", "wav/train/dia0_utt0.wav"]
    meld_prepare.prepare_meld(str(meld_root), str(interrupted), num_workers=1)
    assert_same_files(interrupted, reference)


def test_changing_the_channel_policy_reconverts_every_clip(meld_root, tmp_path):
    meld_prepare.prepare_meld(
        str(meld_root), str(tmp_path), channel_policy="downmix", num_workers=1
    )
    meld_prepare.prepare_meld(
        str(meld_root), str(tmp_path), channel_policy="mean", num_workers=1
    )
    for (folder, name), split in (
        (("train_splits", "dia0_utt1"), "train"),
        (("output_repeated_splits_test", "dia2_utt3"), "test"),
    ):
        samples, _ = soundfile.read(
            tmp_path / "wav" / split / f"{name}.wav", dtype="int16"
        )
        expected = meld_prepare.decode_audio(
            str(meld_root / folder / f"{name}.mp4"), "mean"
        )
        np.testing.assert_array_equal(samples, expected)


def test_annotations_that_are_not_utf8_are_read_as_windows_1252(tmp_path):
    path = tmp_path / "dev_sent_emo.csv"
    cp1252_line = (
        b'1,"I\x92m here, caf\xe9",Joey,Joy,positive,3,4,1,1,"0","1"\r\n'
    )
    path.write_bytes((HEADER + "\r\n").encode() + cp1252_line)
    assert meld_prepare.read_meld_annotations(str(path)) == [
        {
            "dialogue_id": 3,
            "utterance_id": 4,
            "emotion": "joy",
            "sentiment": "positive",
            "speaker": "Joey",
            "text": "I\u2019m here, caf\u00e9",
        }
    ]


def test_unknown_emotion_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "train_sent_emo.csv"
    path.write_text(
        HEADER
        + "\n1,Hi,Joey,joy,positive,0,0,1,1,0,1\n2,Hey,Joey,happy,positive,0,1,1,1,0,1\n"
    )
    with pytest.raises(
        ValueError,
        match=r"train_sent_emo\.csv, line 3: unknown emotion 'happy'",
    ):
        meld_prepare.read_meld_annotations(str(path))


def test_script_converts_in_parallel_to_the_serial_result_and_prints_a_summary(
    meld_root, prepared, tmp_path
):
    save_folder, _ = prepared
    completed = run_script(
        SCRIPT,
        f"--data_folder={meld_root}",
        f"--save_folder={tmp_path}",
        "--num_workers=2",
    )
    assert completed.returncode == 0, completed.stderr
    assert "| main/train | 2 |" in completed.stdout
    assert_same_files(tmp_path, save_folder)
