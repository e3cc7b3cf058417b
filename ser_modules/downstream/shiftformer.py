"""Shiftformer: the temporal-shift transformer of Shen, Liu and Zhou (ICASSP 2023).

"Mingling or misalignment? Temporal shift for speech emotion recognition with pre-trained
representations", the Vesper paper's reference [42] and one of its Table IV downstream
models. Layout, read from the authors' code (ECNU-Cross-Innovation-Lab/ShiftSER,
``models/transformer.py`` with ``--shift --ndiv 4 --bidirectional``):

    SpecAugment (training only) -> 2 x ShiftBlock (width D, MLP 4 D, GELU)
    -> mean over time -> Linear(D, C)

- every block's attention is replaced by a bidirectional temporal shift of 1/4 of the
  channels forward and 1/4 backward by one frame, zero-filled (``blocks.ShiftBlock``);
- no positional embedding is used (the shift carries the order) and the MLP has no
  dropout;
- SpecAugment as in their ``Specaugment`` module: time spans of 15 frames (mask
  probability 0.08, at least 2 spans) replaced by a learned embedding, feature spans of
  64 channels (at most D / 12; probability 0.05, at least 1) zeroed. Span sampling is transformers'
  ``_compute_mask_indices`` (the function the authors call), restricted to each
  utterance's valid frames.

Trainable parameters: ``2 (8 D^2 + 7 D) + D C + C + D``, e.g. 9,451,780 for D = 768 and
16,796,676 for D = 1024 with 4 classes, as the authors' model (see ``tests/test_shiftformer_speechformer.py``).

Everything is masked: padded frames neither enter the shift (zeros instead), nor the
pooling, nor the SpecAugment spans.
"""

import numpy as np
import torch

from ser_modules.downstream.blocks import ShiftBlock
from ser_modules.downstream.models import LayerStackClassifier, valid_frame_mask


class SpecAugment(torch.nn.Module):
    """Time and feature masking of frame features, with a learned time-mask embedding.

    Arguments
    ---------
    dim : int
        Feature size D (the learned embedding has D entries).
    time_mask_length : int
        Frames per time span (15).
    time_mask_prob : float
        Share of frames that start a time span (0.08), as in wav2vec 2.0's masking.
    feature_mask_length : int
        Channels per feature span (64; at most D / 12).
    feature_mask_prob : float
        Share of channels that start a feature span (0.05).
    enabled : bool
        False: the module is the identity (its parameter is kept, so checkpoints match).
    """

    def __init__(
        self,
        dim,
        time_mask_length=15,
        time_mask_prob=0.08,
        feature_mask_length=64,
        feature_mask_prob=0.05,
        enabled=True,
    ):
        super().__init__()
        self.masked_spec_embed = torch.nn.Parameter(torch.empty(dim).uniform_())
        self.time_mask_length = time_mask_length
        self.time_mask_prob = time_mask_prob
        # At most D / 12 channels: the share 64 of 768 has in the authors' setting, so that
        # narrow features (80 log-Mel bands) are not 80 % masked by one span.
        self.feature_mask_length = max(1, min(feature_mask_length, dim // 12))
        self.feature_mask_prob = feature_mask_prob
        self.enabled = enabled

    def forward(self, x, padding_mask):
        """Masks in training mode; identity in evaluation mode.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)``.
        padding_mask : torch.BoolTensor
            ``(B, T)``, True on padded frames (never chosen as span starts).

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        if not (self.training and self.enabled):
            return x
        # Imported here: transformers costs seconds to import, and only training with
        # SpecAugment needs it.
        from transformers.models.wav2vec2.modeling_wav2vec2 import (
            _compute_mask_indices,
        )

        batch, num_frames, dim = x.shape
        spans = torch.zeros(
            batch, num_frames, dtype=torch.bool, device=x.device
        )
        if self.time_mask_prob > 0 and num_frames >= self.time_mask_length:
            lengths = (~padding_mask).long()
            # Utterances shorter than one span keep all their frames; transformers would
            # otherwise refuse the batch.
            too_short = lengths.sum(dim=1) < self.time_mask_length
            drawn = _compute_mask_indices(
                (batch, num_frames),
                self.time_mask_prob,
                self.time_mask_length,
                attention_mask=lengths.masked_fill(too_short[:, None], 1),
                min_masks=2,
            )
            spans = torch.from_numpy(np.asarray(drawn, dtype=bool)).to(x.device)
            spans &= ~padding_mask & ~too_short[:, None]
        # Always in the graph (even with no span drawn), so DistributedDataParallel finds a
        # gradient for the embedding on every rank.
        x = torch.where(
            spans.unsqueeze(-1), self.masked_spec_embed.to(x.dtype), x
        )
        if self.feature_mask_prob > 0:
            channels = _compute_mask_indices(
                (batch, dim),
                self.feature_mask_prob,
                self.feature_mask_length,
                min_masks=1,
            )
            channels = torch.from_numpy(np.asarray(channels, dtype=bool)).to(
                x.device
            )
            x = x.masked_fill(channels.unsqueeze(1), 0.0)
        return x


class ShiftformerClassifier(LayerStackClassifier):
    """Shiftformer on frame features: ``forward(feats (B, T, D), lens (B,)) -> (B, C)``.

    Built on the BAS macro-architecture (``LayerStackClassifier``: no input projection by
    default, blocks, masked mean pooling, linear classifier), with ``shift`` blocks and
    SpecAugment in front.

    Arguments
    ---------
    input_dim : int
        D, the feature size.
    num_classes : int
        C.
    num_layers : int
        Number of shift blocks (2).
    mlp_ratio : int
        MLP hidden size as a multiple of D (4).
    shift_div : int
        1 / share of channels shifted per direction (4).
    shift_stride : int
        Frames moved by the shift (1).
    bidirectional : bool
        Shift a second share backward (True for Shiftformer).
    dropout : float
        Dropout on each MLP output (0 in the authors' code).
    spec_augment : bool
        Apply SpecAugment in training (True in the authors' code).
    model_dim : int or None
        Project the features to this width first (None: work at D, as the authors).
    """

    def __init__(
        self,
        input_dim,
        num_classes,
        num_layers=2,
        mlp_ratio=4,
        shift_div=4,
        shift_stride=1,
        bidirectional=True,
        dropout=0.0,
        spec_augment=True,
        model_dim=None,
    ):
        if num_layers < 1:
            raise ValueError(
                f"Shiftformer needs at least one block, got num_layers={num_layers}."
            )
        width = input_dim if model_dim is None else model_dim
        layers = [
            ShiftBlock(
                width,
                mlp_ratio * width,
                dropout,
                shift_div,
                shift_stride,
                bidirectional,
            )
            for _ in range(num_layers)
        ]
        super().__init__(input_dim, num_classes, model_dim, layers)
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.mlp_ratio = mlp_ratio
        self.shift_div = shift_div
        self.shift_stride = shift_stride
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.model_dim = model_dim
        self.spec_augment = SpecAugment(input_dim, enabled=spec_augment)

    def forward(self, feats, lens):
        """Classifies each utterance (see the class docstring)."""
        padding_mask = ~valid_frame_mask(lens, feats.shape[1])  # (B, T)
        feats = feats.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return super().forward(self.spec_augment(feats, padding_mask), lens)
