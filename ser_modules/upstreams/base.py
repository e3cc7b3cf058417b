"""The one call every frozen upstream answers (the s3prl-style upstream/downstream seam).

An *upstream* turns a padded batch of 16 kHz waveforms into layer-wise frame features::

    feats, feat_lens = upstream(wavs, wav_lens)   # (B, T) -> (B, nL, T', D)

It is frozen: parameters never require gradients, it stays in eval mode (no dropout)
whatever ``.train()`` a surrounding Brain calls, and it runs under ``torch.no_grad``.
Weighting the layers (the SUPERB softmax-weighted sum) is a learnable *downstream* module,
not the upstream's job; the upstream only returns the layers that were selected, so a
feature cache stores nothing more than what is used.

:meth:`Upstream.identity` lists everything that changes the outputs (model files by
their sha256, layer selection, normalisation, sample rate); the feature cache hashes it
into its key so that stale features are never reused.
"""

import abc

import torch
from speechbrain.dataio.dataio import length_to_mask

# Bump when a code change alters the features an upstream returns for the same files and
# options, so that caches built by older code are not reused.
FEATURE_VERSION = 1


def relative_to_absolute(lengths, max_length):
    """SpeechBrain relative lengths ``(B,)`` -> absolute ``(B,)`` int64: ``round(rel * T)``."""
    return torch.round(lengths * max_length).long()


def padding_mask(lengths, max_length):
    """``(B, T)`` bool mask, True on valid positions, from absolute ``lengths`` ``(B,)``."""
    return length_to_mask(
        lengths, max_len=max_length, dtype=torch.bool, device=lengths.device
    )


def resolve_layers(layers, num_hidden_states):
    """Turn a layer selection into a list of hidden-state indices.

    Arguments
    ---------
    layers : str or list of int
        ``"all"``, ``"last"`` or hidden-state indices (0 = CNN/projection output,
        k = output of layer k; negative indices count from the end as in Python).
    num_hidden_states : int
        How many hidden states the model has (transformer layers + 1).

    Returns
    -------
    list of int
        Non-negative indices in the order given.
    """
    if layers == "all":
        return list(range(num_hidden_states))
    if layers == "last":
        return [num_hidden_states - 1]
    if isinstance(layers, str) or not all(
        isinstance(index, int) for index in layers
    ):
        raise ValueError(
            f"layers must be 'all', 'last' or a list of ints, got {layers!r}."
        )
    if not layers:
        raise ValueError(
            "layers is an empty list: select at least one hidden state."
        )
    out_of_range = [
        index
        for index in layers
        if not -num_hidden_states <= index < num_hidden_states
    ]
    if out_of_range:
        raise ValueError(
            f"Layer indices {out_of_range} do not exist: this model has hidden states "
            f"0..{num_hidden_states - 1} (0 = CNN/projection output, k = layer k)."
        )
    resolved = [
        index + num_hidden_states if index < 0 else index for index in layers
    ]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers {layers!r} selects a hidden state twice.")
    return resolved


def minimum_samples(upstream):
    """Samples an upstream needs to give one frame: its CNN's receptive field (400 for
    WavLM / HuBERT), 1 for upstreams that give a frame for any input (filterbanks)."""
    return int(getattr(upstream, "receptive_field", 1))


class Upstream(torch.nn.Module, abc.ABC):
    """Base class of frozen upstreams.

    Subclasses set ``num_layers`` (nL returned), ``output_dim`` (D), ``hop_length``
    (input samples per output frame) and ``sample_rate``, implement :meth:`forward` and
    :meth:`identity`, and call :meth:`freeze` at the end of ``__init__``.
    """

    num_layers: int
    output_dim: int
    hop_length: int
    sample_rate: int

    @property
    def frame_rate(self):
        """Output frames per second (50 for the 20 ms hop of WavLM/HuBERT/wav2vec 2.0)."""
        return self.sample_rate / self.hop_length

    def freeze(self):
        """Stop gradients and put every submodule in eval mode for good."""
        for parameter in self.parameters():
            parameter.requires_grad = False
        return super().train(False)

    def train(self, mode=True):
        """Stay in eval mode: a frozen upstream never uses dropout or layer drop."""
        return super().train(False)

    @abc.abstractmethod
    def forward(self, wavs, wav_lens=None):
        """Compute the selected hidden states of a padded batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` float32 waveforms at ``sample_rate``, right-padded.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths (1.0 = ``T``); ``None`` means no padding.

        Returns
        -------
        feats : torch.Tensor
            ``(B, nL, T', D)``; frames past an utterance's length are zeros.
        feat_lens : torch.Tensor
            ``(B,)`` relative lengths of the valid frames (``round(rel * T')`` frames).
        """

    @abc.abstractmethod
    def identity(self):
        """A JSON-serialisable dict of everything that changes this upstream's outputs."""
