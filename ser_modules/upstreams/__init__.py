"""Frozen upstreams: audio ``(B, T)`` -> layer-wise frame features ``(B, nL, T', D)``.

Every upstream answers the call described in :mod:`ser_modules.upstreams.base`.
:func:`build_upstream` picks one by name, so a recipe's YAML can switch between them::

    upstream: !new:ser_modules.upstreams.build_upstream
        kind: wavlm
        source: !ref <upstream_folder>
        layers: all
"""

from ser_modules.upstreams.base import Upstream
from ser_modules.upstreams.fbank import FbankUpstream
from ser_modules.upstreams.huggingface import LOBES, HuggingFaceUpstream
from ser_modules.upstreams.opensmile import FEATURE_SETS as OPENSMILE_FEATURE_SETS
from ser_modules.upstreams.opensmile import OpenSmileUpstream

__all__ = [
    "Upstream",
    "FbankUpstream",
    "OpenSmileUpstream",
    "HuggingFaceUpstream",
    "build_upstream",
    "build_feature_upstream",
]

FEATURE_UPSTREAMS = ("fbank", *OPENSMILE_FEATURE_SETS)  # fbank, egemaps, compare


def build_feature_upstream(features="fbank", n_mels=80, normalize=False, hop_length=10, sample_rate=16000):
    """A hand-crafted feature upstream chosen by one hparam (``features`` in ``*_fbank.yaml``).

    Arguments
    ---------
    features : str
        ``"fbank"`` (log-Mel filterbanks), ``"egemaps"`` (openSMILE eGeMAPSv02 LLDs, 25
        dims) or ``"compare"`` (openSMILE ComParE_2016 LLDs, 65 dims).
    n_mels : int
        Mel bands (Fbank only).
    normalize : bool
        Per-utterance normalisation (Fbank only; openSMILE features are left as computed).
    hop_length : float
        Frame hop in ms (a multiple of 10 for openSMILE).
    sample_rate : int
        Rate of the input waveforms.

    Returns
    -------
    Upstream
    """
    if features == "fbank":
        return FbankUpstream(n_mels=n_mels, normalize=normalize, hop_length=hop_length, sample_rate=sample_rate)
    if features in OPENSMILE_FEATURE_SETS:
        if normalize:
            raise ValueError(
                f"normalize=True is an Fbank option; the {features} features are used as computed "
                "(the recipe's global input normalisation scales them): set normalize=False."
            )
        return OpenSmileUpstream(features, hop_length=hop_length, sample_rate=sample_rate)
    raise ValueError(f"Unknown features {features!r}: use one of {list(FEATURE_UPSTREAMS)}.")


def build_upstream(kind, source=None, layers="all", **kwargs):
    """Build a frozen upstream by name.

    Arguments
    ---------
    kind : str
        ``"fbank"``, ``"egemaps"`` / ``"compare"`` (openSMILE LLDs), or for a local Hugging Face folder ``"auto"``, ``"wavlm"``
        (also Vesper exports), ``"hubert"`` or ``"wav2vec2"``.
    source : str, optional
        The model folder (Hugging Face kinds only).
    layers : str or list of int
        ``"all"``, ``"last"`` or hidden-state indices (Hugging Face kinds only; Fbank
        has a single layer).
    **kwargs
        Passed to :class:`HuggingFaceUpstream` (``normalize``, ``sample_rate``) or
        :class:`FbankUpstream` (``n_mels``, ``normalize`` ...) or :class:`OpenSmileUpstream`
        (``hop_length``, ``sample_rate``).

    Returns
    -------
    Upstream
    """
    if kind == "fbank":
        if source is not None:
            raise ValueError("The fbank upstream has no model folder: leave source empty.")
        if layers not in ("all", "last", [0], (0,)):
            raise ValueError(f"The fbank upstream has one layer (index 0); got layers={layers!r}.")
        return FbankUpstream(**kwargs)
    if kind in OPENSMILE_FEATURE_SETS:
        if source is not None or layers not in ("all", "last", [0], (0,)):
            raise ValueError(f"The {kind} upstream has no model folder and one layer (index 0).")
        return OpenSmileUpstream(kind, **kwargs)
    if kind == "auto" or kind in LOBES:
        if source is None:
            raise ValueError(f"The {kind} upstream needs source: a local Hugging Face model folder.")
        return HuggingFaceUpstream(source, kind=kind, layers=layers, **kwargs)
    raise ValueError(
        f"Unknown upstream kind {kind!r}: use 'fbank', 'egemaps', 'compare', 'auto' or one of "
        f"{sorted(LOBES)}."
    )
