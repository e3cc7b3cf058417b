"""Emotion-guided masking for Vesper pretraining (Vesper paper, section III-B1).

Mask positions are drawn where the speech energy suggests emotional content: half of them
from the high-energy zone (intense emotions), half from the low-energy zone (subdued
emotions), none from the near-silent noise zone unless the utterance has nothing else.
Each position is the centre of a phoneme-level span (8 frames, 160 ms) that masks the
input of the first transformer layer; a random subset of the positions also centres a
word-level span (40 frames, 800 ms) that masks the output of the middle layer.

The energy is the RMS of 400-sample frames with a 320-sample hop, the receptive field and
stride of WavLM's CNN, so energy frame ``k`` is CNN frame ``k``. The decisions taken where
the paper is silent, and where this module departs from the authors' code, are listed in
``recipes/LSSED/README.md`` ("Design decisions", "Emotion-guided masking").
"""

import math
from dataclasses import dataclass

import torch
from speechbrain.dataio.dataio import length_to_mask

# Zone codes of a frame, from its energy divided by the utterance's maximum.
ZONE_NOISE = 0  # [0, low_threshold]
ZONE_LOW = 1  # (low_threshold, high_threshold]
ZONE_HIGH = 2  # (high_threshold, 1]

MASKING_MODES = ("energy", "random")


@dataclass
class MaskPositions:
    """The mask positions drawn for one utterance (frame indices, all below ``valid_frames``).

    Attributes
    ----------
    valid_frames : int
        Number of CNN frames computed from real samples only.
    phoneme_centres : torch.LongTensor
        ``(P,)`` centres of the phoneme-level spans, distinct.
    phoneme_zones : torch.LongTensor
        ``(P,)`` energy zone (``ZONE_HIGH``, ``ZONE_LOW`` or ``ZONE_NOISE``) of each centre.
    word_centres : torch.LongTensor
        ``(W,)`` centres of the word-level spans, a subset of ``phoneme_centres``.
    """

    valid_frames: int
    phoneme_centres: torch.Tensor
    phoneme_zones: torch.Tensor
    word_centres: torch.Tensor


def spans_to_mask(centres, span, valid_frames, num_frames):
    """Boolean frame mask covering a span of ``span`` frames around each centre.

    A span covers ``[c - span // 2, c - span // 2 + span)``, clipped to the valid frames
    so that padding is never masked.

    Arguments
    ---------
    centres : torch.LongTensor
        ``(K,)`` span centres (frame indices); may be empty.
    span : int
        Span length in frames.
    valid_frames : int
        Frames at or after this index are padding and stay unmasked.
    num_frames : int
        Length of the returned mask.

    Returns
    -------
    torch.BoolTensor
        ``(num_frames,)`` mask, True on masked frames.
    """
    starts = (centres - span // 2).clamp(min=0)  # (K,)
    ends = (centres - span // 2 + span).clamp(max=valid_frames)  # (K,)
    frames = torch.arange(num_frames, device=centres.device)  # (T',)
    inside = (frames >= starts.unsqueeze(1)) & (
        frames < ends.unsqueeze(1)
    )  # (K, T')
    return inside.any(dim=0)  # (T',)


class EnergyGuidedMasker:
    """Draws Vesper's phoneme- and word-level masks from the RMS energy of the waveform.

    Arguments
    ---------
    frame_length : int
        Energy frame length in samples (WavLM's CNN receptive field, 400 = 25 ms).
    hop_length : int
        Energy hop in samples (WavLM's CNN stride, 320 = 20 ms).
    high_threshold : float
        Normalised energies above this form the high zone.
    low_threshold : float
        Normalised energies above this and up to ``high_threshold`` form the low zone.
    phoneme_span : int
        Phoneme-level span in frames (8 = 160 ms).
    phoneme_max_positions : int
        At most this many phoneme-level positions per utterance.
    word_span : int
        Word-level span in frames (40 = 800 ms).
    word_max_positions : int
        At most this many word-level positions per utterance.
    coverage_cap : float
        The number of spans is also capped at ``floor(coverage_cap * L / span)`` for an
        utterance of ``L`` valid frames, so that spans could cover at most this fraction of
        it (the authors' code: 19 phoneme and 3 word positions for a 5 s crop).
    mode : str
        ``"energy"`` (emotion-guided) or ``"random"`` (ablation: the same number of
        positions drawn uniformly from the valid frames).

    Example
    -------
    >>> masker = EnergyGuidedMasker()
    >>> wavs = torch.randn(2, 32000)
    >>> phoneme_mask, word_mask = masker(wavs, torch.tensor([1.0, 0.5]), num_frames=99)
    >>> phoneme_mask.shape, bool(phoneme_mask[1, 49:].any())
    (torch.Size([2, 99]), False)
    """

    def __init__(
        self,
        frame_length=400,
        hop_length=320,
        high_threshold=0.5,
        low_threshold=0.2,
        phoneme_span=8,
        phoneme_max_positions=20,
        word_span=40,
        word_max_positions=4,
        coverage_cap=0.64,
        mode="energy",
    ):
        if mode not in MASKING_MODES:
            raise ValueError(
                f"Unknown masking mode {mode!r}: set the masker's `mode` hparam to one of {MASKING_MODES}."
            )
        if not 0.0 <= low_threshold < high_threshold <= 1.0:
            raise ValueError(
                f"Energy thresholds must satisfy 0 <= low_threshold < high_threshold <= 1, got "
                f"low_threshold={low_threshold}, high_threshold={high_threshold}: fix the hparams."
            )
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.phoneme_span = phoneme_span
        self.phoneme_max_positions = phoneme_max_positions
        self.word_span = word_span
        self.word_max_positions = word_max_positions
        self.coverage_cap = coverage_cap
        self.mode = mode

    def __call__(self, wavs, wav_lens, num_frames, generator=None):
        """Draw the phoneme- and word-level masks of a batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` normalised waveforms, zero-padded.
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths (1.0 = ``T``).
        num_frames : int
            ``T'``, the CNN frame count of the padded batch.
        generator : torch.Generator, optional
            CPU generator for reproducible draws; the global RNG when None.

        Returns
        -------
        phoneme_mask : torch.BoolTensor
            ``(B, T')`` True on frames replaced by the mask embedding before layer 1.
        word_mask : torch.BoolTensor
            ``(B, T')`` True on frames replaced by the mask embedding after layer N/2.
        """
        positions = self.draw_positions(wavs, wav_lens, num_frames, generator)
        return self.positions_to_masks(
            positions, num_frames, device=wavs.device
        )

    def num_valid_frames(self, lengths):
        """Frames made of real samples only, ``1 + (length - frame_length) // hop_length``.

        Arguments
        ---------
        lengths : torch.LongTensor
            ``(B,)`` absolute lengths in samples.

        Returns
        -------
        torch.LongTensor
            ``(B,)`` frame counts, 0 for inputs shorter than one frame.
        """
        frames = 1 + torch.div(
            lengths - self.frame_length, self.hop_length, rounding_mode="floor"
        )
        return frames.clamp(min=0)

    def frame_energy(self, wavs, wav_lens):
        """RMS energy of each frame divided by the maximum over the utterance's valid frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` waveforms, zero-padded.
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths.

        Returns
        -------
        energy : torch.Tensor
            ``(B, F)`` normalised energy in [0, 1], ``F`` the frame count of ``T``; 0 on
            frames that touch padding and everywhere in an all-silent utterance.
        valid_frames : torch.LongTensor
            ``(B,)`` number of frames made of real samples.
        """
        batch, samples = wavs.shape
        lengths = torch.round(wav_lens.to(wavs.device) * samples).long()  # (B,)
        valid_frames = self.num_valid_frames(lengths)  # (B,)
        if samples < self.frame_length:
            return wavs.new_zeros(batch, 0, dtype=torch.float32), valid_frames
        frames = wavs.float().unfold(
            -1, self.frame_length, self.hop_length
        )  # (B, F, frame_length)
        rms = frames.pow(2).mean(dim=-1).sqrt()  # (B, F)
        valid = length_to_mask(
            valid_frames, max_len=rms.shape[1], dtype=torch.bool
        )  # (B, F)
        rms = rms.masked_fill(~valid, 0.0)
        peak = rms.amax(dim=-1, keepdim=True)  # (B, 1)
        # An all-silent utterance has peak 0: dividing by `tiny` keeps its energies at 0.
        energy = rms / peak.clamp(min=torch.finfo(rms.dtype).tiny)  # (B, F)
        return energy, valid_frames

    def energy_zones(self, energy):
        """Zone code (``ZONE_NOISE``, ``ZONE_LOW``, ``ZONE_HIGH``) of each normalised energy.

        Arguments
        ---------
        energy : torch.Tensor
            ``(..., F)`` normalised energies.

        Returns
        -------
        torch.LongTensor
            ``(..., F)`` zone codes.
        """
        zones = torch.full_like(energy, ZONE_NOISE, dtype=torch.long)
        zones[energy > self.low_threshold] = ZONE_LOW
        zones[energy > self.high_threshold] = ZONE_HIGH
        return zones

    def count_positions(self, valid_frames):
        """Number of phoneme- and word-level positions for an utterance of ``valid_frames``.

        Returns
        -------
        (int, int)
            ``min(phoneme_max_positions, floor(coverage_cap * L / phoneme_span))`` and
            ``min(word_max_positions, floor(coverage_cap * L / word_span), phoneme count)``.
        """

        def capped(max_positions, span):
            # Rounding to 9 decimals first keeps exact products such as 0.64 * 125 / 8 = 10
            # from flooring to 9 through float error.
            return max(
                0,
                min(
                    max_positions,
                    math.floor(
                        round(self.coverage_cap * valid_frames / span, 9)
                    ),
                ),
            )

        num_phoneme = capped(self.phoneme_max_positions, self.phoneme_span)
        num_word = min(
            capped(self.word_max_positions, self.word_span), num_phoneme
        )
        return num_phoneme, num_word

    def draw_positions(self, wavs, wav_lens, num_frames, generator=None):
        """Draw the mask centres of every utterance (what ``__call__`` turns into masks).

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` normalised waveforms, zero-padded.
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths.
        num_frames : int
            ``T'``, the CNN frame count of the padded batch.
        generator : torch.Generator, optional
            CPU generator for reproducible draws.

        Returns
        -------
        list of MaskPositions
            One entry per utterance.
        """
        energy, valid_frames = self.frame_energy(wavs, wav_lens)
        longest = int(valid_frames.max()) if len(valid_frames) else 0
        if longest > num_frames:
            raise ValueError(
                f"The batch has utterances of {longest} energy frames but num_frames={num_frames} "
                f"CNN frames: the masker's frame_length={self.frame_length} and "
                f"hop_length={self.hop_length} must equal the CNN's receptive field and stride."
            )
        # Sampling is sequential and small: do it on the CPU, where the generator lives.
        zones = self.energy_zones(energy.cpu())  # (B, F)
        positions = []
        for utterance_zones, frames in zip(zones, valid_frames.tolist()):
            utterance_zones = utterance_zones[:frames]  # (L,)
            num_phoneme, num_word = self.count_positions(frames)
            if self.mode == "energy":
                centres = self._draw_energy_guided(
                    utterance_zones, num_phoneme, generator
                )
            else:
                centres = torch.randperm(frames, generator=generator)[
                    :num_phoneme
                ]
            word_centres = centres[
                torch.randperm(len(centres), generator=generator)[:num_word]
            ]
            positions.append(
                MaskPositions(
                    frames, centres, utterance_zones[centres], word_centres
                )
            )
        return positions

    def positions_to_masks(self, positions, num_frames, device=None):
        """Turn drawn centres into phoneme- and word-level frame masks.

        Arguments
        ---------
        positions : list of MaskPositions
            One entry per utterance, from ``draw_positions``.
        num_frames : int
            ``T'``, length of the masks.
        device : torch.device, optional
            Device of the returned masks.

        Returns
        -------
        phoneme_mask, word_mask : torch.BoolTensor
            ``(B, T')`` each.
        """
        phoneme_mask = torch.stack(
            [
                spans_to_mask(
                    p.phoneme_centres,
                    self.phoneme_span,
                    p.valid_frames,
                    num_frames,
                )
                for p in positions
            ]
        )  # (B, T')
        word_mask = torch.stack(
            [
                spans_to_mask(
                    p.word_centres, self.word_span, p.valid_frames, num_frames
                )
                for p in positions
            ]
        )  # (B, T')
        return phoneme_mask.to(device), word_mask.to(device)

    def _draw_energy_guided(self, zones, count, generator):
        """Draw ``count`` distinct frames: half high zone, half low zone, then fallbacks.

        The high zone takes the odd position when ``count`` is odd. A zone with too few
        frames hands the rest of its share to the other zone, then to any valid frame.
        """
        high, low, noise = (
            _shuffled(torch.nonzero(zones == zone).squeeze(1), generator)
            for zone in (ZONE_HIGH, ZONE_LOW, ZONE_NOISE)
        )
        take_high = min(count - count // 2, len(high))
        take_low = min(count // 2, len(low))
        # At most one zone can be short of its share while the other has frames left, so
        # this order gives the other zone's leftovers first, then the noise zone.
        leftovers = torch.cat([high[take_high:], low[take_low:], noise])
        return torch.cat(
            [
                high[:take_high],
                low[:take_low],
                leftovers[: count - take_high - take_low],
            ]
        )


def _shuffled(indices, generator):
    """``indices`` in a random order."""
    return indices[torch.randperm(len(indices), generator=generator)]
