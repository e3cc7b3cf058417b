"""Log mel filterbank features as an upstream: the no-pretraining baseline.

Wraps ``speechbrain.lobes.features.Fbank`` behind the upstream call, with one "layer"
(nL = 1) and a 10 ms hop. The STFT is centred with zero padding, so frame k sees the
same samples whether the utterance is alone or right-padded with zeros in a batch;
padding is zeroed first to make that hold for any input. The optional per-utterance
mean/variance normalisation (SpeechBrain's ``InputNormalization`` in ``"sentence"`` mode)
takes its statistics over the valid frames only.
"""

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.processing.features import InputNormalization

from ser_modules.upstreams.base import (
    FEATURE_VERSION,
    Upstream,
    padding_mask,
    relative_to_absolute,
)


class FbankUpstream(Upstream):
    """Log mel filterbanks ``(B, 1, T', n_mels)`` with per-utterance normalisation.

    Arguments
    ---------
    n_mels : int
        Number of mel bands (the output dimension D).
    n_fft : int
        FFT size in samples.
    win_length : float
        Window length in ms.
    hop_length : float
        Hop in ms (10 ms = 160 samples at 16 kHz).
    f_min, f_max : float
        Frequency range of the filterbank in Hz (``f_max=None``: Nyquist).
    normalize : bool
        Per-utterance mean/variance normalisation of each band over the valid frames.
    sample_rate : int
        Rate of the input waveforms.
    """

    def __init__(
        self,
        n_mels=80,
        n_fft=400,
        win_length=25,
        hop_length=10,
        f_min=0,
        f_max=None,
        normalize=True,
        sample_rate=16000,
    ):
        super().__init__()
        self.fbank = Fbank(
            sample_rate=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
        )
        self.normalizer = (
            InputNormalization(norm_type="sentence") if normalize else None
        )
        self.options = {
            "n_mels": n_mels,
            "n_fft": n_fft,
            "win_length_ms": win_length,
            "hop_length_ms": hop_length,
            "f_min": f_min,
            "f_max": sample_rate // 2 if f_max is None else f_max,
        }
        self.normalize = normalize
        self.sample_rate = sample_rate
        self.num_layers = 1
        self.output_dim = n_mels
        self.hop_length = self.fbank.compute_STFT.hop_length  # samples
        self.freeze()

    def num_frames(self, num_samples):
        """Frames of the centred STFT for ``num_samples`` (int or int64 tensor)."""
        return num_samples // self.hop_length + 1

    def identity(self):
        """Filterbank options, normalisation and sample rate."""
        return {
            "kind": "fbank",
            **self.options,
            "normalize": self.normalize,
            "sample_rate": self.sample_rate,
            "feature_version": FEATURE_VERSION,
        }

    def forward(self, wavs, wav_lens=None):
        """Filterbanks of a padded batch; see :meth:`Upstream.forward`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` waveforms at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths.

        Returns
        -------
        feats : torch.Tensor
            ``(B, 1, T', n_mels)``, zeros past each utterance's frames.
        feat_lens : torch.Tensor
            ``(B,)`` relative frame lengths.
        """
        batch_size, max_samples = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch_size, device=wavs.device)
        lengths = relative_to_absolute(wav_lens, max_samples)  # (B,)
        frame_lengths = self.num_frames(lengths)  # (B,)
        max_frames = self.num_frames(max_samples)
        feat_lens = frame_lengths.to(wav_lens.dtype) / max_frames
        frame_mask = padding_mask(frame_lengths, max_frames)[
            :, :, None
        ]  # (B, T', 1)
        with torch.no_grad():
            wavs = wavs * padding_mask(lengths, max_samples).to(
                wavs.dtype
            )  # (B, T)
            feats = self.fbank(wavs)  # (B, T', n_mels)
            if self.normalizer is not None:
                # float64 lengths: InputNormalization rebuilds the mask from rel * T', and
                # float32 rounding could count one padded frame into the statistics.
                feats = self.normalizer(
                    feats, frame_lengths.double() / max_frames
                )
            feats = feats * frame_mask.to(feats.dtype)
        return feats.unsqueeze(1), feat_lens  # (B, 1, T', n_mels)
