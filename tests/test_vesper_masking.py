"""Specification of Vesper's emotion-guided masker (ser_modules/vesper/masking.py).

Waveforms are built from regions of a +-amplitude square signal, whose RMS is exactly the
amplitude: loud (1.0, high zone), quiet (0.35, low zone) and silent (0.0, noise zone).
Expected zones come from librosa's RMS, independently of the masker.
"""

import librosa
import numpy as np
import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from transformers import WavLMConfig, WavLMModel

from ser_modules.vesper.masking import (
    ZONE_HIGH,
    ZONE_LOW,
    ZONE_NOISE,
    EnergyGuidedMasker,
    MaskPositions,
)

HOP = 320
FRAME = 400
FIVE_SECOND_FRAMES = 249  # 1 + (80000 - 400) // 320


def regions_waveform(*regions):
    """Waveform of ``(num_frames, amplitude)`` regions; frame k starts at sample 320 k.

    Each region lasts ``num_frames`` hops; 80 more samples at the end make the frame count
    equal to the total number of hops.
    """
    amplitudes = torch.cat(
        [
            torch.full((frames * HOP,), float(amplitude))
            for frames, amplitude in regions
        ]
    )
    amplitudes = torch.cat([amplitudes, amplitudes[-1].repeat(FRAME - HOP)])
    sign = 1.0 - 2.0 * (torch.arange(len(amplitudes)) % 2)
    return amplitudes * sign  # (T,)


def reference_zones(wav):
    """Zone of each frame from librosa's RMS divided by its maximum (thresholds 0.2, 0.5)."""
    rms = librosa.feature.rms(
        y=wav.numpy(), frame_length=FRAME, hop_length=HOP, center=False
    )[0]
    energy = rms / rms.max()
    return np.where(
        energy > 0.5, ZONE_HIGH, np.where(energy > 0.2, ZONE_LOW, ZONE_NOISE)
    )


def zone_counts(centres, zones):
    """How many centres fall in the high, low and noise zones."""
    picked = zones[centres.numpy()]
    return (
        int((picked == ZONE_HIGH).sum()),
        int((picked == ZONE_LOW).sum()),
        int((picked == ZONE_NOISE).sum()),
    )


def draw_one(masker, wav, seed):
    """Draw the positions of a single full-length utterance."""
    generator = torch.Generator().manual_seed(seed)
    num_frames = 1 + (len(wav) - FRAME) // HOP
    return masker.draw_positions(
        wav.unsqueeze(0), torch.ones(1), num_frames, generator
    )[0]


def test_energy_frame_count_equals_wavlm_cnn_output_length():
    config = WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(4,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    lengths = torch.tensor([400, 401, 719, 720, 1039, 12345, 16000, 80000])
    expected = WavLMModel(config)._get_feat_extract_output_lengths(lengths)
    masker = EnergyGuidedMasker()
    assert torch.equal(masker.num_valid_frames(lengths), expected)
    energy, _ = masker.frame_energy(torch.randn(1, 12345), torch.ones(1))
    assert energy.shape[1] == int(expected[5])


def test_frame_energy_is_librosa_rms_over_each_utterances_maximum_of_valid_frames():
    generator = torch.Generator().manual_seed(0)
    first = 0.3 * torch.randn(16000, generator=generator)
    second = 2.0 * torch.randn(9000, generator=generator)
    # Loud padding must neither enter the maximum nor get an energy.
    wavs = torch.stack([first, torch.cat([second, torch.full((7000,), 100.0)])])
    energy, valid_frames = EnergyGuidedMasker().frame_energy(
        wavs, torch.tensor([1.0, 9000 / 16000])
    )
    for row, wav in enumerate((first, second)):
        rms = librosa.feature.rms(
            y=wav.numpy(), frame_length=FRAME, hop_length=HOP, center=False
        )[0]
        frames = len(rms)
        assert int(valid_frames[row]) == frames
        torch.testing.assert_close(
            energy[row, :frames],
            torch.from_numpy(rms / rms.max()),
            atol=1e-5,
            rtol=1e-5,
        )
        assert not energy[row, frames:].any()


def test_centres_are_half_from_high_zone_and_half_from_low_zone():
    wav = regions_waveform((80, 1.0), (80, 0.35), (89, 0.0))
    zones = reference_zones(wav)
    for seed in range(5):
        positions = draw_one(EnergyGuidedMasker(), wav, seed)
        # 19 positions for 249 frames: the high zone takes the odd one.
        assert zone_counts(positions.phoneme_centres, zones) == (10, 9, 0)
        assert torch.equal(
            positions.phoneme_zones,
            torch.from_numpy(zones)[positions.phoneme_centres],
        )


def test_empty_low_zone_hands_its_share_to_the_high_zone():
    wav = regions_waveform((120, 1.0), (129, 0.0))
    zones = reference_zones(wav)
    assert not (zones == ZONE_LOW).any()
    positions = draw_one(EnergyGuidedMasker(), wav, seed=0)
    assert zone_counts(positions.phoneme_centres, zones) == (19, 0, 0)


def test_small_high_zone_hands_the_rest_of_its_share_to_the_low_zone():
    wav = regions_waveform((3, 1.0), (150, 0.35), (96, 0.0))
    zones = reference_zones(wav)
    assert (zones == ZONE_HIGH).sum() == 3
    positions = draw_one(EnergyGuidedMasker(), wav, seed=0)
    assert zone_counts(positions.phoneme_centres, zones) == (3, 16, 0)


def test_small_zones_are_used_up_then_any_valid_frame_is_drawn():
    wav = regions_waveform((3, 1.0), (3, 0.35), (243, 0.0))
    zones = reference_zones(wav)
    positions = draw_one(EnergyGuidedMasker(), wav, seed=0)
    centres = positions.phoneme_centres
    assert zone_counts(centres, zones) == (3, 3, 13)
    assert len(set(centres.tolist())) == 19


def test_zones_are_relative_to_each_utterances_own_maximum():
    # The quiet utterance comes second: the authors' code scales its thresholds by the
    # first utterance's maximum and would find only noise in it.
    loud = regions_waveform((249, 1.0))
    quiet = 0.01 * regions_waveform((80, 1.0), (80, 0.35), (89, 0.0))
    generator = torch.Generator().manual_seed(0)
    positions = EnergyGuidedMasker().draw_positions(
        torch.stack([loud, quiet]), torch.ones(2), FIVE_SECOND_FRAMES, generator
    )
    assert zone_counts(
        positions[1].phoneme_centres, reference_zones(quiet)
    ) == (10, 9, 0)


@pytest.mark.parametrize(
    "valid_frames, expected",
    [
        (249, (19, 3)),
        (1000, (20, 4)),
        (125, (10, 2)),
        (63, (5, 1)),
        (62, (4, 0)),
        (13, (1, 0)),
        (12, (0, 0)),
    ],
)
def test_position_counts_follow_the_coverage_cap(valid_frames, expected):
    assert EnergyGuidedMasker().count_positions(valid_frames) == expected


def test_word_centres_are_a_subset_of_the_phoneme_centres():
    wav = regions_waveform((80, 1.0), (80, 0.35), (89, 0.0))
    for seed in range(5):
        positions = draw_one(EnergyGuidedMasker(), wav, seed)
        word = set(positions.word_centres.tolist())
        assert len(word) == 3
        assert word <= set(positions.phoneme_centres.tolist())


def test_masks_cover_spans_centred_on_positions_and_clipped_to_valid_frames():
    positions = MaskPositions(
        valid_frames=20,
        phoneme_centres=torch.tensor([0, 10, 19]),
        phoneme_zones=torch.tensor([ZONE_HIGH, ZONE_LOW, ZONE_HIGH]),
        word_centres=torch.tensor([10]),
    )
    phoneme_mask, word_mask = EnergyGuidedMasker().positions_to_masks(
        [positions], num_frames=25
    )
    expected_phoneme = torch.zeros(1, 25, dtype=torch.bool)
    expected_phoneme[0, 0:4] = True  # centre 0: [-4, 4) clipped at 0
    expected_phoneme[0, 6:14] = True  # centre 10: [6, 14)
    expected_phoneme[0, 15:20] = (
        True  # centre 19: [15, 23) clipped at 20 valid frames
    )
    expected_word = torch.zeros(1, 25, dtype=torch.bool)
    expected_word[0, 0:20] = True  # centre 10: [-10, 30) clipped to [0, 20)
    assert torch.equal(phoneme_mask, expected_phoneme)
    assert torch.equal(word_mask, expected_word)


def test_call_returns_the_masks_of_the_drawn_positions():
    masker = EnergyGuidedMasker()
    wavs = torch.randn(2, 80000, generator=torch.Generator().manual_seed(0))
    wav_lens = torch.tensor([1.0, 0.6])
    positions = masker.draw_positions(
        wavs, wav_lens, FIVE_SECOND_FRAMES, torch.Generator().manual_seed(1)
    )
    expected = masker.positions_to_masks(positions, FIVE_SECOND_FRAMES)
    masks = masker(
        wavs, wav_lens, FIVE_SECOND_FRAMES, torch.Generator().manual_seed(1)
    )
    assert torch.equal(masks[0], expected[0]) and torch.equal(
        masks[1], expected[1]
    )
    assert masks[0].dtype == torch.bool and masks[0].shape == (
        2,
        FIVE_SECOND_FRAMES,
    )


def test_masks_never_cover_padding():
    masker = EnergyGuidedMasker()
    # Padding holds loud noise, the most attractive frames for the energy-guided draw.
    wavs = torch.randn(3, 80000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([80000, 32000, 14400])
    valid_frames = masker.num_valid_frames(lengths)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        phoneme_mask, word_mask = masker(
            wavs, lengths / 80000, FIVE_SECOND_FRAMES, generator
        )
        for row, frames in enumerate(valid_frames.tolist()):
            assert phoneme_mask[row, :frames].any()
            assert not phoneme_mask[row, frames:].any()
            assert not word_mask[row, frames:].any()


def test_all_silent_input_draws_positions_from_valid_frames_without_nan():
    masker = EnergyGuidedMasker()
    wavs = torch.zeros(2, 80000)
    energy, _ = masker.frame_energy(wavs, torch.tensor([1.0, 0.5]))
    assert torch.isfinite(energy).all() and not energy.any()
    generator = torch.Generator().manual_seed(0)
    positions = masker.draw_positions(
        wavs, torch.tensor([1.0, 0.5]), FIVE_SECOND_FRAMES, generator
    )
    for utterance, count in zip(positions, (19, 9)):
        centres = utterance.phoneme_centres
        assert len(set(centres.tolist())) == count
        assert int(centres.max()) < utterance.valid_frames


def test_inputs_shorter_than_a_frame_or_a_span_get_empty_masks_beside_a_long_one():
    long = regions_waveform((80, 1.0), (80, 0.35), (89, 0.0))
    wavs = torch.zeros(3, len(long))
    wavs[0] = long
    wavs[1, :300] = 1.0  # shorter than one frame: 0 valid frames
    wavs[2, :2000] = 1.0  # 6 valid frames, shorter than one phoneme span
    wav_lens = torch.tensor([len(long), 300, 2000]) / len(long)
    generator = torch.Generator().manual_seed(0)
    phoneme_mask, word_mask = EnergyGuidedMasker()(
        wavs, wav_lens, FIVE_SECOND_FRAMES, generator
    )
    assert phoneme_mask[0].any() and word_mask[0].any()
    assert not phoneme_mask[1:].any() and not word_mask[1:].any()


def test_batch_shorter_than_one_frame_gives_masks_without_frames():
    phoneme_mask, word_mask = EnergyGuidedMasker()(
        torch.ones(2, 300), torch.tensor([1.0, 0.5]), num_frames=0
    )
    assert phoneme_mask.shape == (2, 0) and word_mask.shape == (2, 0)


def test_random_mode_draws_the_same_counts_regardless_of_energy():
    wav = regions_waveform((125, 1.0), (124, 0.0))
    zones = reference_zones(wav)
    noise_centres = {"energy": 0, "random": 0}
    for mode in noise_centres:
        for seed in range(5):
            positions = draw_one(EnergyGuidedMasker(mode=mode), wav, seed)
            assert (
                len(positions.phoneme_centres),
                len(positions.word_centres),
            ) == (19, 3)
            noise_centres[mode] += zone_counts(
                positions.phoneme_centres, zones
            )[2]
    assert noise_centres["energy"] == 0
    assert noise_centres["random"] > 0


def test_same_generator_seed_reproduces_the_masks():
    masker = EnergyGuidedMasker()
    wavs = torch.randn(2, 80000, generator=torch.Generator().manual_seed(0))
    first = masker(
        wavs,
        torch.ones(2),
        FIVE_SECOND_FRAMES,
        torch.Generator().manual_seed(3),
    )
    second = masker(
        wavs,
        torch.ones(2),
        FIVE_SECOND_FRAMES,
        torch.Generator().manual_seed(3),
    )
    third = masker(
        wavs,
        torch.ones(2),
        FIVE_SECOND_FRAMES,
        torch.Generator().manual_seed(4),
    )
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], third[0])


def test_num_frames_below_the_energy_frame_count_is_rejected():
    with pytest.raises(ValueError, match="num_frames=100"):
        EnergyGuidedMasker()(
            torch.randn(1, 80000), torch.ones(1), num_frames=100
        )


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="'uniform'"):
        EnergyGuidedMasker(mode="uniform")


def test_masker_is_built_from_hyperpyyaml():
    hparams = load_hyperpyyaml(
        "masker: !new:ser_modules.vesper.masking.EnergyGuidedMasker\n  mode: random\n  coverage_cap: 0.5\n"
    )
    assert hparams["masker"].mode == "random"
    assert hparams["masker"].count_positions(FIVE_SECOND_FRAMES) == (15, 3)
