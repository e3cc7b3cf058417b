"""One upstream class for every hand-crafted feature set, chosen by the ``features`` hparam.

``*_fbank.yaml`` build their upstream as ``!name:ser_modules.upstreams.FeatureUpstream`` with
``features: fbank | egemaps | compare``, so one command-line value switches between log-Mel
filterbanks and the openSMILE low-level descriptors. It is a class (not a factory
function) so that exported model folders rebuild it with ``!new:`` like any upstream.
"""

from ser_modules.upstreams.base import Upstream
from ser_modules.upstreams.fbank import FbankUpstream
from ser_modules.upstreams.opensmile import (
    FEATURE_SETS as OPENSMILE_FEATURE_SETS,
)
from ser_modules.upstreams.opensmile import OpenSmileUpstream

FEATURE_UPSTREAMS = (
    "fbank",
    *OPENSMILE_FEATURE_SETS,
)  # fbank, egemaps, compare


def build_feature_upstream(
    features="fbank",
    n_mels=80,
    normalize=False,
    hop_length=10,
    sample_rate=16000,
):
    """The hand-crafted feature upstream named ``features`` (see :class:`FeatureUpstream`)."""
    if features == "fbank":
        return FbankUpstream(
            n_mels=n_mels,
            normalize=normalize,
            hop_length=hop_length,
            sample_rate=sample_rate,
        )
    if features in OPENSMILE_FEATURE_SETS:
        if normalize:
            raise ValueError(
                f"normalize=True is an Fbank option; the {features} features are used as computed "
                "(the recipe's global input normalisation scales them): set normalize=False."
            )
        return OpenSmileUpstream(
            features, hop_length=hop_length, sample_rate=sample_rate
        )
    raise ValueError(
        f"Unknown features {features!r}: use one of {list(FEATURE_UPSTREAMS)}."
    )


class FeatureUpstream(Upstream):
    """Log-Mel filterbanks or openSMILE LLDs ``(B, 1, T', D)``, by name.

    Delegates to :class:`FbankUpstream` or :class:`OpenSmileUpstream`, and has their
    identity, so a feature cache built by either is the same cache.

    Arguments
    ---------
    features : str
        ``"fbank"`` (80 log-Mel bands by default), ``"egemaps"`` (openSMILE eGeMAPSv02
        LLDs, 25 dims) or ``"compare"`` (ComParE_2016 LLDs, 65 dims).
    n_mels : int
        Mel bands (Fbank only).
    normalize : bool
        Per-utterance normalisation (Fbank only; openSMILE features are left as computed).
    hop_length : float
        Frame hop in ms (a multiple of 10 for openSMILE).
    sample_rate : int
        Rate of the input waveforms.
    """

    def __init__(
        self,
        features="fbank",
        n_mels=80,
        normalize=False,
        hop_length=10,
        sample_rate=16000,
    ):
        super().__init__()
        self.features = features
        self.n_mels = n_mels
        self.normalize = normalize
        self.hop_length_ms = hop_length
        self.inner = build_feature_upstream(
            features, n_mels, normalize, hop_length, sample_rate
        )
        self.sample_rate = sample_rate
        self.num_layers = self.inner.num_layers
        self.output_dim = self.inner.output_dim
        self.hop_length = self.inner.hop_length  # samples
        self.receptive_field = getattr(self.inner, "receptive_field", 1)
        self.freeze()

    def num_frames(self, num_samples):
        """Output frames for ``num_samples`` (int or int64 tensor)."""
        return self.inner.num_frames(num_samples)

    def identity(self):
        """The chosen upstream's identity (the cache key does not see this wrapper)."""
        return self.inner.identity()

    def forward(self, wavs, wav_lens=None):
        """See :meth:`Upstream.forward`: ``(B, T)`` -> ``(B, 1, T', D)`` and relative lengths."""
        return self.inner(wavs, wav_lens)
