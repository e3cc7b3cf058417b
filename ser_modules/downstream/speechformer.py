"""SpeechFormer (Chen et al., Interspeech 2022), the Vesper paper's reference [65].

"SpeechFormer: a hierarchical efficient framework incorporating the characteristics of
speech"; Table IV of the Vesper paper uses its small variant, SpeechFormer-S. Layout, read
from the authors' code (HappyColor/SpeechFormer, ``model/speechformer.py``,
``module/speechformer_layer.py``, ``config/model_config.json``, ``train_model.py``):

- width ``D' = (D // heads) * heads`` (the first D' channels are kept), FFN width D' / 2,
  8 heads, dropout and attention dropout 0.1;
- four stages of ``[2, 2, 4, 4]`` SpeechFormer layers (``blocks.SpeechFormerLayer``), each
  stage opening with a LayerNorm; the layers of the first stage add a sinusoidal
  positional encoding to their attention input;
- statistical windows in milliseconds: the attention windows 50 / 400 / 2000 ms
  (frame, phoneme, word level) and global for the last stage; between stages, merging
  blocks average 50 / 250 / 1000 ms of frames (from the input frame rate), then
  ``Linear(D', D' * expand) -> LayerNorm``. Converted to frames with the authors'
  integer arithmetic: with hop h ms, merges ``m_i = M_i // h`` and windows ``l_i = L_i // h``;
  stage i works on frames already merged by ``m_{i-1}`` (``m_0 = 1``), so its window is
  ``l_i // m_{i-1}`` (made odd by adding 1 when even) and its merge ``m_i // m_{i-1}``;
- ``expand`` is ``[1, 1, 1]`` for SpeechFormer-S (``[1, 1, 2]`` for -B);
- mean over the remaining frames, then ``Linear(D', D'/2) -> ReLU -> Dropout(0.5) ->
  Linear(D'/2, D'/4) -> ReLU -> Dropout(0.5) -> Linear(D'/4, C)``;
- weights of every stage Xavier-uniform initialised (matrices only), as theirs.

For 20 ms frames (WavLM / HuBERT / Vesper): windows 3, 11, 9 frames and global; merges
2, 6, 4 (the frame rate goes 50 -> 25 -> 4.17 -> 1.04 Hz). For 10 ms frames (their
log-Mel and wav2vec features): windows 5, 9, 9; merges 5, 5, 4.

Differences from the authors' code, none of which changes a parameter: padded frames are
masked everywhere (attention keys, merging, pooling) instead of being attended to as
zeros (see ``blocks.WindowedSelfAttention``); a merge averages the valid frames of a
chunk divided by the chunk size, which is exactly their zero-padded average for the
last, partial chunk of an utterance; the positional encoding is computed for any length
(theirs is a 2000-row table stored as a frozen ``nn.Parameter``, 2000 D' entries that
their parameter count includes and ours, a buffer-free computation, does not).
"""

import math

import torch

from ser_modules.downstream.blocks import SpeechFormerLayer
from ser_modules.downstream.models import valid_frame_mask

# SpeechFormer's statistics of speech (their ``statistical_information``), in ms.
MERGE_MS = (50, 250, 1000)
WINDOW_MS = (50, 400, 2000)


def statistical_windows(hop_ms):
    """Attention windows and merge sizes, in frames of each stage's input.

    Arguments
    ---------
    hop_ms : float
        Frame hop of the input features in milliseconds (20 for WavLM / HuBERT / Vesper).

    Returns
    -------
    windows : list
        One odd window length per stage, None for the global last stage (4 entries).
    merges : list of int
        Frames averaged by each of the 3 merging blocks, in frames of its input.
    """
    if not hop_ms > 0:
        raise ValueError(f"The frame hop must be positive, got {hop_ms} ms.")
    merges_abs = [int(ms // hop_ms) for ms in MERGE_MS]
    windows_abs = [int(ms // hop_ms) for ms in WINDOW_MS]
    if min(merges_abs) < 1:
        raise ValueError(
            f"A {hop_ms} ms frame hop is longer than SpeechFormer's shortest statistic "
            f"({min(MERGE_MS)} ms): use features with a hop of at most {min(MERGE_MS)} ms."
        )
    windows, merges, previous = [], [], 1
    for merge, window in zip(merges_abs, windows_abs):
        window = max(window // previous, 1)
        windows.append(window + 1 if window % 2 == 0 else window)
        merges.append(max(merge // previous, 1))
        previous = merge
    windows.append(None)
    return windows, merges


def sinusoidal_encoding(num_frames, dim, device=None, dtype=torch.float32):
    """The transformer's sinusoidal positional encoding ``(T, D)`` (sin on even channels).

    ``PE[t, j] = sin / cos(t / 10000^(2 (j // 2) / D))``, as the authors' table.
    """
    positions = torch.arange(num_frames, device=device, dtype=torch.float64)[
        :, None
    ]
    rates = torch.pow(
        10000.0, -2.0 * (torch.arange(dim, device=device) // 2).double() / dim
    )
    angles = positions * rates[None, :]  # (T, D)
    encoding = torch.where(
        torch.arange(dim, device=device) % 2 == 0,
        torch.sin(angles),
        torch.cos(angles),
    )
    return encoding.to(dtype)


def merge_frames(x, padding_mask, merge):
    """Averages non-overlapping chunks of ``merge`` frames (the last chunk may be partial).

    A chunk's value is the sum of its valid frames divided by ``merge`` (the authors'
    average over a zero-padded chunk); a merged frame is valid when its chunk holds a
    valid frame.

    Arguments
    ---------
    x : torch.Tensor
        ``(B, T, D)``.
    padding_mask : torch.BoolTensor
        ``(B, T)``, True on padded frames.
    merge : int
        Chunk length in frames.

    Returns
    -------
    merged : torch.Tensor
        ``(B, ceil(T / merge), D)``.
    merged_mask : torch.BoolTensor
        ``(B, ceil(T / merge))``, True on padded merged frames.
    """
    batch, num_frames, dim = x.shape
    num_chunks = math.ceil(num_frames / merge)
    pad = num_chunks * merge - num_frames
    x = torch.nn.functional.pad(
        x.masked_fill(padding_mask.unsqueeze(-1), 0.0), (0, 0, 0, pad)
    )
    valid = torch.nn.functional.pad(~padding_mask, (0, pad), value=False)
    merged = (
        x.view(batch, num_chunks, merge, dim).sum(dim=2) / merge
    )  # (B, T', D)
    merged_mask = ~valid.view(batch, num_chunks, merge).any(dim=2)  # (B, T')
    return merged, merged_mask


class MergeBlock(torch.nn.Module):
    """Merging block between two stages: chunk average, ``Linear(D, D * expand)``, LayerNorm.

    Arguments
    ---------
    dim : int
        Input width D.
    merge : int
        Frames per chunk.
    expand : int
        Width multiplier (1 in SpeechFormer-S).
    """

    def __init__(self, dim, merge, expand=1):
        super().__init__()
        self.merge = merge
        self.linear = torch.nn.Linear(dim, dim * expand)
        self.norm = torch.nn.LayerNorm(dim * expand)

    def forward(self, x, padding_mask):
        """Returns ``(merged (B, T', D * expand), merged padding mask (B, T'))``."""
        merged, merged_mask = merge_frames(x, padding_mask, self.merge)
        return self.norm(self.linear(merged)), merged_mask


class SpeechFormerStage(torch.nn.Module):
    """LayerNorm, then ``num_layers`` SpeechFormer layers with the same window.

    Arguments
    ---------
    num_layers : int
        Layers of the stage.
    dim, num_heads, ffn_dim, window, dropout, attention_dropout
        See ``blocks.SpeechFormerLayer``.
    use_position : bool
        Add the sinusoidal positional encoding to every layer's attention input.
    """

    def __init__(
        self,
        num_layers,
        dim,
        num_heads,
        ffn_dim,
        window,
        dropout,
        attention_dropout,
        use_position=False,
    ):
        super().__init__()
        self.use_position = use_position
        self.input_norm = torch.nn.LayerNorm(dim)
        self.layers = torch.nn.ModuleList(
            SpeechFormerLayer(
                dim, num_heads, ffn_dim, window, dropout, attention_dropout
            )
            for _ in range(num_layers)
        )
        for parameter in self.parameters():
            if parameter.dim() > 1:
                torch.nn.init.xavier_uniform_(parameter)

    def forward(self, x, padding_mask):
        """``(B, T, D)`` -> ``(B, T, D)``; padded frames never reach a valid frame."""
        position = None
        if self.use_position:
            position = sinusoidal_encoding(
                x.shape[1], x.shape[2], x.device, x.dtype
            )
        x = self.input_norm(x)
        for layer in self.layers:
            x = layer(x, padding_mask, position)
        return x


class SpeechFormerClassifier(torch.nn.Module):
    """SpeechFormer on frame features: ``forward(feats (B, T, D), lens (B,)) -> (B, C)``.

    Defaults are SpeechFormer-S (see the module docstring).

    Arguments
    ---------
    input_dim : int
        D, the feature size.
    num_classes : int
        C.
    frame_hop_ms : float
        Hop of the input frames in ms (20 for the SSL upstreams; the Fbank upstream's
        ``hop_length``), which turns the statistical windows into frames.
    stage_layers : list of int
        Layers per stage ([2, 2, 4, 4]).
    expand : list of int
        Width multiplier of each merging block ([1, 1, 1] for -S, [1, 1, 2] for -B).
    num_heads : int
        Attention heads (8).
    ffn_ratio : float
        FFN width as a share of the model width (0.5).
    dropout : float
        Dropout in the layers (0.1).
    attention_dropout : float
        Dropout on the attention probabilities (0.1).
    classifier_dropout : float
        Dropout in the classifier MLP (0.5).
    """

    def __init__(
        self,
        input_dim,
        num_classes,
        frame_hop_ms=20,
        stage_layers=(2, 2, 4, 4),
        expand=(1, 1, 1),
        num_heads=8,
        ffn_ratio=0.5,
        dropout=0.1,
        attention_dropout=0.1,
        classifier_dropout=0.5,
    ):
        super().__init__()
        stage_layers, expand = list(stage_layers), list(expand)
        if len(stage_layers) != 4 or len(expand) != 3:
            raise ValueError(
                f"SpeechFormer has 4 stages and 3 merging blocks: got stage_layers={stage_layers} "
                f"and expand={expand}."
            )
        width = (input_dim // num_heads) * num_heads
        if width < 1:
            raise ValueError(
                f"{input_dim}-dim features cannot feed {num_heads} heads."
            )
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.frame_hop_ms = frame_hop_ms
        self.stage_layers = stage_layers
        self.expand = expand
        self.num_heads = num_heads
        self.ffn_ratio = ffn_ratio
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.classifier_dropout = classifier_dropout
        self.width = width
        self.windows, self.merges = statistical_windows(frame_hop_ms)

        self.stages = torch.nn.ModuleList()
        self.merge_blocks = torch.nn.ModuleList()
        dim = width
        for index, (num_layers, window) in enumerate(
            zip(stage_layers, self.windows)
        ):
            ffn_dim = int(dim * ffn_ratio)
            self.stages.append(
                SpeechFormerStage(
                    num_layers,
                    dim,
                    num_heads,
                    ffn_dim,
                    window,
                    dropout,
                    attention_dropout,
                    use_position=index == 0,
                )
            )
            if index < len(self.merges):
                self.merge_blocks.append(
                    MergeBlock(dim, self.merges[index], expand[index])
                )
                dim *= expand[index]
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(dim, dim // 2),
            torch.nn.ReLU(),
            torch.nn.Dropout(classifier_dropout),
            torch.nn.Linear(dim // 2, dim // 4),
            torch.nn.ReLU(),
            torch.nn.Dropout(classifier_dropout),
            torch.nn.Linear(dim // 4, num_classes),
        )

    def frame_features(self, feats, lens):
        """The last stage's frames and padding mask (before pooling).

        Returns
        -------
        x : torch.Tensor
            ``(B, T'', D'')``.
        padding_mask : torch.BoolTensor
            ``(B, T'')``, True on padded frames.
        """
        padding_mask = ~valid_frame_mask(lens, feats.shape[1])  # (B, T)
        x = feats[..., : self.width].masked_fill(
            padding_mask.unsqueeze(-1), 0.0
        )
        for index, stage in enumerate(self.stages):
            x = stage(x, padding_mask)
            if index < len(self.merge_blocks):
                x, padding_mask = self.merge_blocks[index](x, padding_mask)
        return x, padding_mask

    def forward(self, feats, lens):
        """Classifies each utterance.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, D)`` frame features.
        lens : torch.Tensor
            ``(B,)`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``(B, C)`` logits.
        """
        x, padding_mask = self.frame_features(feats, lens)
        valid = (~padding_mask).unsqueeze(-1)  # (B, T'', 1)
        pooled = torch.where(valid, x, torch.zeros_like(x)).sum(
            dim=1
        ) / valid.sum(dim=1).to(x.dtype)
        return self.classifier(pooled)


def upstream_frame_hop_ms(upstream_kind, fbank_hop_ms=None):
    """Frame hop in ms of an upstream picked by kind, for ``frame_hop_ms`` in the YAML.

    20 ms for the Hugging Face kinds (WavLM, HuBERT, wav2vec 2.0 and Vesper exports); for
    the feature upstreams (``"fbank"``, openSMILE's ``"egemaps"`` / ``"compare"``),
    ``fbank_hop_ms`` or else the feature upstream's default hop.
    """
    import inspect

    from ser_modules.upstreams.fbank import FbankUpstream
    from ser_modules.upstreams.opensmile import FEATURE_SETS, OpenSmileUpstream

    feature_upstreams = {
        "fbank": FbankUpstream,
        **{name: OpenSmileUpstream for name in FEATURE_SETS},
    }
    if upstream_kind not in feature_upstreams:
        return 20
    if fbank_hop_ms is not None:
        return fbank_hop_ms
    return (
        inspect.signature(feature_upstreams[upstream_kind].__init__)
        .parameters["hop_length"]
        .default
    )
