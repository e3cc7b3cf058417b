"""Frozen upstreams: audio ``(B, T)`` -> layer-wise frame features ``(B, nL, T', D)``.

Every upstream answers the call described in :mod:`ser_modules.upstreams.base`.
:func:`build_upstream` picks one by name, so a recipe's YAML can switch between them::

    upstream: !new:ser_modules.upstreams.build_upstream
        kind: wavlm
        source: !ref <upstream_folder>
        layers: all
"""

from ser_modules.upstreams.base import Upstream, minimum_samples
from ser_modules.upstreams.fbank import FbankUpstream
from ser_modules.upstreams.feature_switch import (
    FEATURE_UPSTREAMS,
    FeatureUpstream,
    build_feature_upstream,
)
from ser_modules.upstreams.huggingface import LOBES, HuggingFaceUpstream
from ser_modules.upstreams.opensmile import (
    FEATURE_SETS as OPENSMILE_FEATURE_SETS,
)
from ser_modules.upstreams.opensmile import OpenSmileUpstream

__all__ = [
    "Upstream",
    "FbankUpstream",
    "OpenSmileUpstream",
    "FeatureUpstream",
    "FEATURE_UPSTREAMS",
    "HuggingFaceUpstream",
    "build_upstream",
    "build_feature_upstream",
    "minimum_samples",
]


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
            raise ValueError(
                "The fbank upstream has no model folder: leave source empty."
            )
        if layers not in ("all", "last", [0], (0,)):
            raise ValueError(
                f"The fbank upstream has one layer (index 0); got layers={layers!r}."
            )
        return FbankUpstream(**kwargs)
    if kind in OPENSMILE_FEATURE_SETS:
        if source is not None or layers not in ("all", "last", [0], (0,)):
            raise ValueError(
                f"The {kind} upstream has no model folder and one layer (index 0)."
            )
        if kwargs.pop("normalize", None):
            raise ValueError(
                f"The {kind} upstream has no per-utterance normalisation (it would erase level "
                "cues); normalise globally with input_norm and leave normalize empty."
            )
        return OpenSmileUpstream(kind, **kwargs)
    if kind == "auto" or kind in LOBES:
        if source is None:
            raise ValueError(
                f"The {kind} upstream needs source: a local Hugging Face model folder."
            )
        return HuggingFaceUpstream(source, kind=kind, layers=layers, **kwargs)
    raise ValueError(
        f"Unknown upstream kind {kind!r}: use 'fbank', 'egemaps', 'compare', 'auto' or one of "
        f"{sorted(LOBES)}."
    )
