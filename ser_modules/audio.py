"""The audio pipeline shared by every recipe: read, mix to mono, resample, crop or pad.

Reading goes through :mod:`soundfile` (what ``speechbrain.dataio.dataio.read_audio`` uses in
SpeechBrain 1.1; ``torchaudio.load`` would need torchcodec), resampling through
``torchaudio.functional.resample``. Every failure names the file and says what to do.
:class:`WaveformDataset` and :func:`collate_waveforms` turn a list of files into padded
batches for a frozen upstream (feature cache, t-SNE).
"""

import logging

import numpy as np
import soundfile
import torch
import torchaudio
from speechbrain.utils.data_utils import batch_pad_right

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Largest sample magnitude accepted. Integer formats decode to [-1, 1]; float formats hold
# whatever was written, and a file with samples far outside [-1, 1] (1e20: a broken
# converter, or uninitialised memory) turns into NaN features downstream. 1e3 leaves room
# for unnormalised but sane float files and rejects the rest with the file named.
MAX_ABS_SAMPLE = 1e3


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, non-finite or out-of-range samples."""


def audio_info(path):
    """Duration (s), sample rate and channel count of an audio file, from its header.

    Raises
    ------
    AudioError
        When the file cannot be opened or holds no samples.
    """
    try:
        info = soundfile.info(str(path))
    except (
        Exception
    ) as error:  # soundfile raises several error types for bad files
        raise AudioError(
            f"Cannot read the audio file {path} ({error}). Check that it is a complete "
            "audio file (wav, flac, ogg, mp3); remove it from the corpus or re-extract it."
        ) from error
    if info.frames <= 0:
        raise AudioError(
            f"The audio file {path} is empty (0 samples): remove it or re-extract it."
        )
    return info.frames / info.samplerate, info.samplerate, info.channels


def to_mono(waveform):
    """Average the channels of a ``(T, C)`` or ``(T,)`` array into ``(T,)``."""
    if waveform.ndim == 1:
        return waveform
    return waveform.mean(axis=1)


def load_audio(path, sample_rate=SAMPLE_RATE):
    """Read an audio file as a mono float32 waveform at ``sample_rate``.

    Multichannel audio is averaged to mono; any input rate is resampled.

    Arguments
    ---------
    path : str
        Audio file readable by libsndfile (wav, flac, ogg, mp3 ...).
    sample_rate : int
        Target rate (16 kHz for every upstream of this project).

    Returns
    -------
    torch.Tensor
        ``(T,)`` float32 waveform.

    Raises
    ------
    AudioError
        Unreadable file, no samples, NaN / infinite samples, or samples whose magnitude
        exceeds :data:`MAX_ABS_SAMPLE` (float formats only can hold them).
    """
    try:
        data, file_rate = soundfile.read(
            str(path), dtype="float32", always_2d=True
        )
    except Exception as error:
        raise AudioError(
            f"Cannot read the audio file {path} ({error}). Check that it is a complete "
            "audio file (wav, flac, ogg, mp3); remove it from the manifest or re-extract it."
        ) from error
    if data.shape[0] == 0:
        raise AudioError(
            f"The audio file {path} is empty (0 samples): remove it from the manifest."
        )
    if not np.isfinite(data).all():
        raise AudioError(
            f"The audio file {path} holds NaN or infinite samples: re-extract it or remove it."
        )
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            f"The audio file {path} holds samples of magnitude {peak:.3g}, far outside the audio range "
            f"[-1, 1] (limit {MAX_ABS_SAMPLE:g}): it would give NaN features. Re-extract it (normalised) "
            "or remove it from the manifest."
        )
    waveform = torch.from_numpy(np.ascontiguousarray(to_mono(data)))  # (T,)
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(
            waveform, file_rate, sample_rate
        )
    return waveform


def crop_or_pad(
    waveform, num_samples, mode="first", generator=None, min_samples=None
):
    """Crop a waveform to ``num_samples`` or leave it shorter (padding happens in batching).

    The papers feed the first N seconds of each utterance (``mode="first"``); a random
    window is offered for training as augmentation (``mode="random"``). Shorter inputs are
    returned unchanged: SpeechBrain's padded batches pad them and carry the true length,
    so padding never enters a result. The one exception is ``min_samples``: an utterance
    shorter than the samples an upstream needs for one frame (400 for WavLM's CNN) would
    give no feature at all, so it is zero-padded to that length.

    Arguments
    ---------
    waveform : torch.Tensor
        ``(T,)`` waveform.
    num_samples : int or None
        Maximum length; ``None`` or ``<= 0`` keeps the whole utterance.
    mode : str
        ``"first"`` (first ``num_samples``), ``"random"`` (a random window) or
        ``"center"`` (the middle window).
    generator : torch.Generator, optional
        Source of randomness for ``mode="random"``.
    min_samples : int, optional
        Zero-pad (at the end) waveforms shorter than this.

    Returns
    -------
    torch.Tensor
        ``(max(min(T, num_samples), min_samples),)`` waveform.
    """
    length = waveform.shape[0]
    if min_samples is not None and length < min_samples:
        return torch.nn.functional.pad(waveform, (0, min_samples - length))
    if num_samples is None or num_samples <= 0 or length <= num_samples:
        return waveform
    if mode == "first":
        start = 0
    elif mode == "random":
        start = int(
            torch.randint(
                0, length - num_samples + 1, (1,), generator=generator
            )
        )
    elif mode == "center":
        start = (length - num_samples) // 2
    else:
        raise ValueError(
            f"Unknown crop mode {mode!r}: use 'first', 'random' or 'center'."
        )
    return waveform[start : start + num_samples]


def seconds_to_samples(seconds, sample_rate=SAMPLE_RATE):
    """Convert a crop length in seconds (``None`` or ``<= 0`` = no crop) to samples."""
    if seconds is None or seconds <= 0:
        return None
    return int(round(seconds * sample_rate))


class WaveformDataset(torch.utils.data.Dataset):
    """Reads, resamples and crops the audio of ``(utt_id, path)`` items for extraction.

    Waveforms shorter than ``min_samples`` are zero-padded to it.
    """

    def __init__(
        self, items, num_samples, crop_mode, sample_rate, min_samples=None
    ):
        self.items = items
        self.num_samples = num_samples
        self.crop_mode = crop_mode
        self.sample_rate = sample_rate
        self.min_samples = min_samples

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        utt_id, path = self.items[index]
        waveform = load_audio(
            path, self.sample_rate
        )  # (T,); AudioError names the file
        return utt_id, crop_or_pad(
            waveform,
            self.num_samples,
            self.crop_mode,
            min_samples=self.min_samples,
        )


def collate_waveforms(batch):
    """``[(utt_id, (T_i,))]`` -> ``(ids, (B, T) padded, (B,) relative lengths)``."""
    ids = [utt_id for utt_id, _ in batch]
    wavs, wav_lens = batch_pad_right([waveform for _, waveform in batch])
    return ids, wavs, torch.as_tensor(wav_lens, dtype=torch.float32)
