"""openSMILE acoustic features as an upstream: eGeMAPS / ComParE low-level descriptors.

The ``opensmile`` package (audEERING's Python wrapper, which ships the SMILExtract
binary) computes the field's standard hand-crafted feature sets:

* ``egemaps``: eGeMAPSv02, 25 low-level descriptors (LLDs) per 10 ms frame (pitch,
  jitter, shimmer, loudness, formants, spectral slopes ...); 88 functionals per utterance;
* ``compare``: ComParE_2016, 65 LLDs per frame; 6,373 functionals per utterance.

:class:`OpenSmileUpstream` answers the frozen-upstream call (one "layer", nL = 1) with the
LLDs, so every recipe and the feature cache take it like Fbank; :func:`opensmile_functionals`
gives the utterance-level functionals (the classic eGeMAPS + SVM baseline,
:mod:`ser_modules.classic_baseline`).

openSMILE works on one numpy signal at a time, so each utterance of a padded batch is cut
to its true length before extraction: padding never changes its features. Its frames
follow the longest analysis window of the set (60 ms for pitch): an utterance of ``n``
samples at 16 kHz gives ``(n - 800) // 160 + 1`` frames when ``n >= 960`` and none below,
so :attr:`OpenSmileUpstream.receptive_field` is 60 ms and shorter inputs are zero-padded to
it by the cache and the data pipeline (as for the CNN of WavLM).
"""

import warnings

import numpy as np
import torch

from ser_modules.upstreams.base import (
    FEATURE_VERSION,
    Upstream,
    padding_mask,
    relative_to_absolute,
)

# Short name -> (opensmile.FeatureSet member, LLDs per frame, functionals per utterance).
FEATURE_SETS = {
    "egemaps": ("eGeMAPSv02", 25, 88),
    "compare": ("ComParE_2016", 65, 6373),
}
LLD_HOP_SECONDS = 0.01  # every LLD of both sets is computed every 10 ms
# Frame k of the LLDs covers [k * hop, k * hop + 60 ms): the first frame needs 60 ms and
# the count is (n - 50 ms) // hop + 1 (measured for every length; checked at run time).
LLD_WINDOW_SECONDS = 0.06
LLD_OFFSET_SECONDS = 0.05


def _import_opensmile():
    try:
        import opensmile
    except (
        ImportError
    ) as error:  # pragma: no cover - the package is in requirements.txt
        raise ImportError(
            "The openSMILE upstream needs the 'opensmile' package: pip install -r requirements.txt"
        ) from error
    return opensmile


def opensmile_version():
    """The installed ``opensmile`` package's version (recorded in run identities)."""
    return _import_opensmile().__version__


def feature_set_name(feature_set):
    """The opensmile name (``eGeMAPSv02``) of a short name (``egemaps``); clear error otherwise."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(
            f"Unknown openSMILE feature set {feature_set!r}: use one of {sorted(FEATURE_SETS)}."
        )
    return FEATURE_SETS[feature_set][0]


def build_smile(feature_set, level):
    """An ``opensmile.Smile`` extractor of ``feature_set`` (short name) at ``level``
    (``"lld"`` or ``"functionals"``)."""
    opensmile = _import_opensmile()
    levels = {
        "lld": opensmile.FeatureLevel.LowLevelDescriptors,
        "functionals": opensmile.FeatureLevel.Functionals,
    }
    if level not in levels:
        raise ValueError(
            f"Unknown openSMILE feature level {level!r}: use 'lld' or 'functionals'."
        )
    return opensmile.Smile(
        feature_set=getattr(
            opensmile.FeatureSet, feature_set_name(feature_set)
        ),
        feature_level=levels[level],
    )


def _process(smile, signal, sample_rate, what):
    """``smile.process_signal`` of a 1-D float32 array -> ``(frames, features)`` float32.

    The wrapper answers an input too short for one frame with a row of NaN (and a
    warning); that becomes zero rows here, and any other non-finite value is an error.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Segment too short")
        values = smile.process_signal(
            np.ascontiguousarray(signal, dtype=np.float32), sample_rate
        ).to_numpy()
    values = values.astype(np.float32)
    if values.shape[0] == 1 and np.isnan(values).all():
        return values[:0]
    if not np.isfinite(values).all():
        raise ValueError(
            f"openSMILE returned non-finite values for {what}: check that the audio is a finite "
            "waveform in [-1, 1]."
        )
    return values


def opensmile_functionals(
    waveform, sample_rate=16000, feature_set="egemaps", smile=None
):
    """Utterance-level openSMILE functionals (88 for eGeMAPSv02, 6,373 for ComParE_2016).

    Arguments
    ---------
    waveform : torch.Tensor or numpy.ndarray
        ``(T,)`` mono waveform in [-1, 1], unpadded.
    sample_rate : int
        Its rate.
    feature_set : str
        ``"egemaps"`` or ``"compare"``.
    smile : opensmile.Smile, optional
        A functionals extractor to reuse (see :func:`build_smile`).

    Returns
    -------
    numpy.ndarray
        ``(F,)`` float32.
    """
    smile = smile or build_smile(feature_set, "functionals")
    signal = (
        waveform.detach().cpu().numpy()
        if isinstance(waveform, torch.Tensor)
        else np.asarray(waveform)
    )
    values = _process(
        smile, signal, sample_rate, f"a waveform of {signal.shape[-1]} samples"
    )
    if values.shape[0] != 1:
        raise ValueError(
            f"openSMILE gave no functionals for a waveform of {signal.shape[-1]} samples: it needs "
            f"at least {LLD_WINDOW_SECONDS:.2f} s of audio."
        )
    return values[0]


def functional_names(feature_set="egemaps"):
    """Names of the functionals of ``feature_set``, in :func:`opensmile_functionals` order."""
    return list(build_smile(feature_set, "functionals").feature_names)


class OpenSmileUpstream(Upstream):
    """openSMILE low-level descriptors ``(B, 1, T', D)`` (D = 25 eGeMAPSv02, 65 ComParE_2016).

    Arguments
    ---------
    feature_set : str
        ``"egemaps"`` (eGeMAPSv02) or ``"compare"`` (ComParE_2016).
    hop_length : float
        Output hop in ms, a multiple of openSMILE's 10 ms: 20 averages each pair of LLD
        frames (50 frames/s like WavLM / HuBERT and the Fbank hparams; attention costs 4x
        less than at 100 frames/s). A last, incomplete group is averaged over its frames.
    sample_rate : int
        Rate of the input waveforms.
    """

    def __init__(self, feature_set="egemaps", hop_length=10, sample_rate=16000):
        super().__init__()
        feature_set_name(feature_set)  # validates the name
        lld_hop = round(LLD_HOP_SECONDS * sample_rate)
        if abs(lld_hop - LLD_HOP_SECONDS * sample_rate) > 1e-6:
            raise ValueError(
                f"sample_rate={sample_rate} does not give a whole number of samples per 10 ms."
            )
        stride = hop_length / (1000 * LLD_HOP_SECONDS)
        if stride < 1 or abs(stride - round(stride)) > 1e-9:
            raise ValueError(
                f"hop_length={hop_length} ms: openSMILE computes its LLDs every 10 ms, so use a "
                "multiple of 10 ms (10, 20, 30 ...)."
            )
        self.feature_set = feature_set
        self.frame_stride = int(round(stride))
        self.hop_length_ms = hop_length
        self.sample_rate = sample_rate
        self.lld_hop = lld_hop  # samples
        self.lld_offset = round(LLD_OFFSET_SECONDS * sample_rate)
        self.receptive_field = round(LLD_WINDOW_SECONDS * sample_rate)
        self.hop_length = (
            lld_hop * self.frame_stride
        )  # samples per output frame
        self.num_layers = 1
        self.output_dim = FEATURE_SETS[feature_set][1]
        self.smile = build_smile(feature_set, "lld")
        self.feature_names = list(self.smile.feature_names)
        self.freeze()

    def lld_frames(self, num_samples):
        """10 ms LLD frames openSMILE gives for ``num_samples`` (int or int64 tensor)."""
        if isinstance(num_samples, torch.Tensor):
            frames = (num_samples - self.lld_offset).div(
                self.lld_hop, rounding_mode="floor"
            ) + 1
            return torch.where(
                num_samples >= self.receptive_field,
                frames,
                torch.zeros_like(frames),
            )
        if num_samples < self.receptive_field:
            return 0
        return (num_samples - self.lld_offset) // self.lld_hop + 1

    def num_frames(self, num_samples):
        """Output frames for ``num_samples``: the LLD frames grouped by ``frame_stride``."""
        lld = self.lld_frames(num_samples)
        if isinstance(lld, torch.Tensor):
            return (lld + self.frame_stride - 1).div(
                self.frame_stride, rounding_mode="floor"
            )
        return -(-lld // self.frame_stride)

    def identity(self):
        """Feature set, openSMILE version, hop and sample rate."""
        return {
            "kind": "opensmile",
            "feature_set": feature_set_name(self.feature_set),
            "feature_level": "lld",
            "opensmile_version": opensmile_version(),
            "hop_length_ms": self.hop_length_ms,
            "sample_rate": self.sample_rate,
            "feature_version": FEATURE_VERSION,
        }

    def _utterance(self, signal, index):
        """``(T', D)`` features of one unpadded signal (numpy)."""
        values = _process(
            self.smile,
            signal,
            self.sample_rate,
            f"utterance {index} of the batch",
        )
        expected = self.lld_frames(signal.shape[0])
        if values.shape[0] != expected:
            raise RuntimeError(
                f"openSMILE gave {values.shape[0]} frames for {signal.shape[0]} samples where "
                f"{expected} were expected: this opensmile version frames differently; pin the "
                "version of requirements.txt."
            )
        if self.frame_stride > 1 and values.shape[0]:
            groups = -(-values.shape[0] // self.frame_stride)
            padded = np.zeros(
                (groups * self.frame_stride, values.shape[1]), dtype=np.float32
            )
            padded[: values.shape[0]] = values
            counts = np.full(groups, self.frame_stride, dtype=np.float32)
            counts[-1] = values.shape[0] - (groups - 1) * self.frame_stride
            values = (
                padded.reshape(groups, self.frame_stride, -1).sum(axis=1)
                / counts[:, None]
            )
        return torch.from_numpy(values)

    def forward(self, wavs, wav_lens=None):
        """LLDs of a padded batch, each utterance at its true length; see :meth:`Upstream.forward`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` waveforms at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths.

        Returns
        -------
        feats : torch.Tensor
            ``(B, 1, T', D)`` float32, zeros past each utterance's frames.
        feat_lens : torch.Tensor
            ``(B,)`` relative frame lengths.
        """
        batch_size, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch_size, device=wavs.device)
        lengths = relative_to_absolute(wav_lens, max_samples)  # (B,)
        frame_lengths = self.num_frames(lengths.cpu())  # (B,)
        max_frames = max(int(self.num_frames(max_samples)), 1)
        feats = torch.zeros(batch_size, max_frames, self.output_dim)
        signals = wavs.detach().float().cpu().numpy()
        for index, length in enumerate(lengths.tolist()):
            utterance = self._utterance(
                signals[index, :length], index
            )  # (T'_i, D)
            feats[index, : utterance.shape[0]] = utterance
        feat_lens = (
            frame_lengths.to(wav_lens.dtype).to(wav_lens.device) / max_frames
        )
        mask = padding_mask(frame_lengths, max_frames)[:, :, None]  # (B, T', 1)
        feats = feats * mask.to(feats.dtype)
        return feats.unsqueeze(1).to(wavs.device), feat_lens  # (B, 1, T', D)
