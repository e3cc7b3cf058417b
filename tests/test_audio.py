"""Specification of the shared audio pipeline (ser_modules/audio.py): read, mono, resample, crop."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from ser_modules.audio import (
    AudioError,
    audio_info,
    crop_or_pad,
    load_audio,
    seconds_to_samples,
)


def _sine(frequency, sample_rate, seconds, amplitude=0.5):
    times = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2.0 * np.pi * frequency * times)).astype(
        np.float32
    )


def _dominant_frequency(waveform, sample_rate):
    spectrum = np.abs(
        np.fft.rfft(waveform.numpy() * np.hanning(waveform.shape[0]))
    )
    return np.fft.rfftfreq(waveform.shape[0], 1.0 / sample_rate)[
        np.argmax(spectrum)
    ]


@pytest.mark.parametrize("file_rate", [44100, 48000])
def test_resampling_to_16khz_keeps_a_sines_frequency_and_duration(
    tmp_path, file_rate
):
    path = tmp_path / f"sine_{file_rate}.wav"
    soundfile.write(
        path, _sine(440.0, file_rate, 1.0), file_rate, subtype="FLOAT"
    )
    waveform = load_audio(str(path))
    assert waveform.dtype == torch.float32 and waveform.ndim == 1
    assert waveform.shape[0] == 16000
    assert abs(_dominant_frequency(waveform, 16000) - 440.0) <= 1.0


def test_file_at_the_target_rate_is_returned_sample_for_sample(tmp_path):
    samples = _sine(300.0, 16000, 0.25)
    soundfile.write(tmp_path / "a.wav", samples, 16000, subtype="FLOAT")
    assert torch.equal(
        load_audio(str(tmp_path / "a.wav")), torch.from_numpy(samples)
    )


def test_six_channel_48khz_file_becomes_the_resampled_mean_of_its_channels(
    tmp_path,
):
    # Six sines of different frequencies, so that any channel weighting but the mean shows.
    channels = np.stack(
        [_sine(200.0 * (c + 1), 48000, 0.5, amplitude=0.1) for c in range(6)],
        axis=1,
    )
    soundfile.write(tmp_path / "surround.wav", channels, 48000, subtype="FLOAT")
    expected = torchaudio.functional.resample(
        torch.from_numpy(channels.mean(axis=1)), 48000, 16000
    )
    waveform = load_audio(str(tmp_path / "surround.wav"))
    assert waveform.shape == (8000,)
    torch.testing.assert_close(waveform, expected, atol=1e-6, rtol=0)


def test_int16_int24_and_float_files_of_the_same_signal_read_the_same(tmp_path):
    # Values on the int16 grid are represented exactly by all three encodings.
    samples = (np.round(_sine(250.0, 16000, 0.2) * 32767) / 32768).astype(
        np.float32
    )
    waveforms = {}
    for subtype in ("PCM_16", "PCM_24", "FLOAT"):
        path = tmp_path / f"{subtype}.wav"
        soundfile.write(path, samples, 16000, subtype=subtype)
        waveforms[subtype] = load_audio(str(path))
    assert torch.equal(waveforms["PCM_16"], waveforms["PCM_24"])
    assert torch.equal(waveforms["PCM_16"], waveforms["FLOAT"])
    assert torch.equal(waveforms["FLOAT"], torch.from_numpy(samples))


def test_zero_byte_file_raises_audio_error_naming_it(tmp_path):
    path = tmp_path / "zero_bytes.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="zero_bytes.wav"):
        load_audio(str(path))


def test_wav_without_samples_raises_audio_error_naming_it(tmp_path):
    path = tmp_path / "no_samples.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no_samples.wav.*empty"):
        load_audio(str(path))


def test_random_bytes_raise_audio_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(
        np.random.default_rng(0)
        .integers(0, 256, 4096, dtype=np.uint8)
        .tobytes()
    )
    with pytest.raises(AudioError, match="garbage.wav"):
        load_audio(str(path))


def test_nan_samples_raise_audio_error_naming_the_file(tmp_path):
    samples = _sine(440.0, 16000, 0.1)
    samples[100] = np.nan
    path = tmp_path / "has_nan.wav"
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="has_nan.wav.*NaN"):
        load_audio(str(path))


def test_audio_error_is_a_value_error():
    # Callers that already catch ValueError for bad inputs also catch bad audio.
    assert issubclass(AudioError, ValueError)


def test_audio_info_reads_duration_rate_and_channels_from_the_header(tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.zeros((24000, 2), dtype=np.float32), 48000)
    assert audio_info(str(path)) == (0.5, 48000, 2)


def test_audio_info_rejects_empty_and_unreadable_files_naming_them(tmp_path):
    soundfile.write(
        tmp_path / "no_samples.wav", np.zeros(0, dtype=np.float32), 16000
    )
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all" * 64)
    with pytest.raises(AudioError, match="no_samples.wav"):
        audio_info(str(tmp_path / "no_samples.wav"))
    with pytest.raises(AudioError, match="garbage.wav"):
        audio_info(str(tmp_path / "garbage.wav"))


def test_first_crop_keeps_the_first_samples():
    waveform = torch.arange(100.0)
    assert torch.equal(
        crop_or_pad(waveform, 30, mode="first"), torch.arange(30.0)
    )


def test_center_crop_keeps_the_middle_window():
    waveform = torch.arange(100.0)
    assert torch.equal(
        crop_or_pad(waveform, 30, mode="center"), torch.arange(35.0, 65.0)
    )


def test_random_crop_is_a_contiguous_window_inside_the_waveform():
    waveform = torch.arange(100.0)
    for seed in range(20):
        crop = crop_or_pad(
            waveform,
            30,
            mode="random",
            generator=torch.Generator().manual_seed(seed),
        )
        start = int(crop[0])
        assert 0 <= start <= 70
        assert torch.equal(crop, torch.arange(start, start + 30.0))


def test_random_crop_is_reproducible_with_a_seeded_generator_and_varies_across_seeds():
    waveform = torch.arange(100.0)

    def start(seed):
        return int(
            crop_or_pad(
                waveform,
                30,
                mode="random",
                generator=torch.Generator().manual_seed(seed),
            )[0]
        )

    assert start(7) == start(7)
    assert len({start(seed) for seed in range(20)}) > 5


def test_random_crop_reaches_both_ends_of_the_waveform():
    waveform = torch.arange(12.0)
    starts = {
        int(
            crop_or_pad(
                waveform,
                10,
                mode="random",
                generator=torch.Generator().manual_seed(seed),
            )[0]
        )
        for seed in range(50)
    }
    assert starts == {0, 1, 2}


@pytest.mark.parametrize("mode", ["first", "random", "center"])
def test_inputs_not_longer_than_the_crop_are_returned_unchanged(mode):
    waveform = torch.randn(20)
    assert crop_or_pad(waveform, 20, mode=mode) is waveform
    assert crop_or_pad(waveform, 50, mode=mode) is waveform


@pytest.mark.parametrize("num_samples", [None, 0, -1])
def test_no_crop_length_keeps_the_whole_utterance(num_samples):
    waveform = torch.randn(20)
    assert crop_or_pad(waveform, num_samples) is waveform


def test_unknown_crop_mode_is_rejected_with_the_valid_modes():
    with pytest.raises(ValueError, match="first.*random.*center"):
        crop_or_pad(torch.randn(20), 10, mode="last")


def test_seconds_to_samples_converts_at_16khz_and_maps_no_crop_to_none():
    assert seconds_to_samples(2.5) == 40000
    assert seconds_to_samples(0.1, sample_rate=44100) == 4410
    assert seconds_to_samples(None) is None
    assert seconds_to_samples(0) is None


def test_finite_but_huge_float_samples_raise_audio_error_naming_the_file(
    tmp_path,
):
    path = str(tmp_path / "huge.wav")
    soundfile.write(
        path, np.full(1600, 1e20, dtype=np.float32), 16000, subtype="FLOAT"
    )
    with pytest.raises(
        AudioError, match=r"huge.wav holds samples of magnitude 1e\+20"
    ):
        load_audio(path)


def test_unnormalised_but_sane_float_samples_are_read(tmp_path):
    path = str(tmp_path / "loud.wav")
    soundfile.write(
        path, np.full(1600, 3.0, dtype=np.float32), 16000, subtype="FLOAT"
    )
    assert float(load_audio(path).max()) == 3.0
