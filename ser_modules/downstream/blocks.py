"""The candidate blocks of the BAS search space (BAS paper, section 2), and two more.

Every block maps frame features ``(B, T, D) -> (B, T, D)`` and takes the key padding mask
``(B, T)`` (True on padded frames), so the BAS super net and the derived networks can
chain them freely:

- ``msa_ffn``: a standard transformer encoder block, eq. (3),
  ``layer(X) = FFN(MSA(X) + X) + MSA(X) + X``.
- ``msa``: the multi-head self-attention sub-module alone, with its residual.
- ``ffn``: the two-layer feed-forward sub-module alone, **without** residual.

Where LayerNorm sits: post-LN, as in the vanilla transformer the paper builds on
(Vaswani et al., its reference [19]) and as the same lab writes its MSA in the Vesper
paper (``MSA(Q, K, V) = Norm(Heads + Q)``). Eq. (3) omits normalisation; we read each
``+`` of a residual as ``Norm(. + .)``:

    Y = Norm1(X + MSA(X))          # the ``msa`` block
    layer(X) = Norm2(Y + FFN(Y))   # the ``msa_ffn`` block

The ``ffn`` block carries no norm: without a residual there is no sum to normalise, and
the paper's "simple FFN" baseline is a plain 2-layer MLP. ``msa_ffn`` is built from an
``msa`` block and an ``ffn`` block, so its sub-modules are the other two candidates and
its layout is exactly ``torch.nn.TransformerEncoderLayer(norm_first=False)``'s.

Two blocks of the SER-specific downstream models of the Vesper paper's Table IV extend the
search space beyond the paper (pick them with ``--candidates=[msa_ffn,msa,ffn,shift]``):

- ``shift``: a Shiftformer block (Shen et al., ICASSP 2023): a parameter-free temporal
  shift replaces the self-attention, then ``Norm(X + MLP(X))``.
- ``speechformer``: a SpeechFormer encoder layer (Chen et al., Interspeech 2022): post-LN
  self-attention restricted to a window around each frame, then a post-LN ReLU FFN.

Every block zeroes nothing it does not own: padded frames may hold anything on input,
and no valid frame's output depends on them.
"""

import torch
import torch.nn.functional as F


class FeedForwardBlock(torch.nn.Module):
    """Two-layer position-wise feed-forward network, no residual (the ``ffn`` candidate).

    ``Linear(D, F) -> ReLU -> Dropout -> Linear(F, D) -> Dropout``; ReLU as in the
    vanilla transformer and the Vesper paper's FFN (eq. 4 there).

    Arguments
    ---------
    dim : int
        Feature size D of the input and output.
    ffn_dim : int
        Hidden size F.
    dropout : float
        Dropout after the activation and on the output.
    """

    def __init__(self, dim, ffn_dim, dropout=0.1):
        super().__init__()
        self.linear1 = torch.nn.Linear(dim, ffn_dim)
        self.activation = torch.nn.ReLU()
        self.dropout1 = torch.nn.Dropout(dropout)
        self.linear2 = torch.nn.Linear(ffn_dim, dim)
        self.dropout2 = torch.nn.Dropout(dropout)

    @classmethod
    def from_widths(cls, dim, num_heads, ffn_dim, dropout):
        """Builds the block from the widths shared by all candidates (heads unused)."""
        return cls(dim, ffn_dim, dropout)

    def forward(self, x, padding_mask=None):
        """Transforms each frame on its own.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)`` frame features.
        padding_mask : torch.BoolTensor, optional
            ``(B, T)``, accepted for a common block signature; frames are independent
            here, so padding cannot leak into valid frames.

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        hidden = self.dropout1(self.activation(self.linear1(x)))  # (B, T, F)
        return self.dropout2(self.linear2(hidden))  # (B, T, D)


class SelfAttentionBlock(torch.nn.Module):
    """Multi-head self-attention with residual and post-LayerNorm (the ``msa`` candidate).

    ``Norm(X + Dropout(MSA(X)))``, padded frames masked out as keys.

    Arguments
    ---------
    dim : int
        Feature size D; must be divisible by ``num_heads``.
    num_heads : int
        Number of attention heads.
    dropout : float
        Dropout on the attention output (before the residual sum).
    attention_dropout : float
        Dropout on the attention probabilities. Off by default: with it, PyTorch cannot use
        its fused attention kernel and a training step on CPU gets about 5x slower, while the
        output dropout already regularises the block.
    """

    def __init__(self, dim, num_heads, dropout=0.1, attention_dropout=0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"Feature size {dim} is not divisible by num_heads={num_heads}: "
                "choose a head count that divides it, or set model_dim to project "
                "the features to a size that it divides."
            )
        self.attention = torch.nn.MultiheadAttention(
            dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = torch.nn.Dropout(dropout)
        self.norm = torch.nn.LayerNorm(dim)

    @classmethod
    def from_widths(cls, dim, num_heads, ffn_dim, dropout):
        """Builds the block from the widths shared by all candidates (ffn_dim unused)."""
        return cls(dim, num_heads, dropout)

    def forward(self, x, padding_mask=None):
        """Lets every frame attend to the valid frames of its utterance.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)`` frame features.
        padding_mask : torch.BoolTensor, optional
            ``(B, T)``, True on padded frames; every row needs one False entry, or the
            attention of that utterance is undefined (NaN).

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        attended, _ = self.attention(
            x, x, x, key_padding_mask=padding_mask, need_weights=False
        )  # (B, T, D)
        return self.norm(x + self.dropout(attended))


class TransformerEncoderBlock(torch.nn.Module):
    """Standard post-LN transformer encoder block, eq. (3) (the ``msa_ffn`` candidate).

    ``Y = Norm1(X + MSA(X))``, then ``Norm2(Y + FFN(Y))``: the ``msa`` candidate followed
    by the ``ffn`` candidate wrapped in a residual and a norm.

    Arguments
    ---------
    dim : int
        Feature size D; must be divisible by ``num_heads``.
    num_heads : int
        Number of attention heads.
    ffn_dim : int
        Hidden size of the feed-forward sub-module.
    dropout : float
        Dropout used in both sub-modules.
    """

    def __init__(self, dim, num_heads, ffn_dim, dropout=0.1):
        super().__init__()
        self.self_attention = SelfAttentionBlock(dim, num_heads, dropout)
        self.feed_forward = FeedForwardBlock(dim, ffn_dim, dropout)
        self.norm = torch.nn.LayerNorm(dim)

    @classmethod
    def from_widths(cls, dim, num_heads, ffn_dim, dropout):
        """Builds the block from the widths shared by all candidates."""
        return cls(dim, num_heads, ffn_dim, dropout)

    def forward(self, x, padding_mask=None):
        """Self-attention then feed-forward, each with its residual.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)`` frame features.
        padding_mask : torch.BoolTensor, optional
            ``(B, T)``, True on padded frames (see ``SelfAttentionBlock.forward``).

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        attended = self.self_attention(
            x, padding_mask
        )  # (B, T, D) = Norm1(X + MSA(X))
        return self.norm(attended + self.feed_forward(attended))


def temporal_shift(
    x, padding_mask=None, shift_div=4, stride=1, bidirectional=True
):
    """Shifts a share of the channels along time, filling the vacated frames with zeros.

    With ``fold = D // shift_div``: channels ``[0, fold)`` move ``stride`` frames forward
    in time (frame t receives frame t - stride); with ``bidirectional``, channels
    ``[fold, 2 fold)`` move ``stride`` frames backward (frame t receives t + stride). The
    other channels are unchanged. Frames shifted in from outside the utterance are zeros,
    at both ends of each utterance's *valid* frames: padded frames are zeroed first, so
    the last valid frames receive zeros, not padding. This is the shift of the
    Shiftformer authors' code (``TemporalShift``, zero padding): per direction
    ``D // shift_div`` channels, so the bidirectional default ``shift_div=4`` moves
    half of the channels.

    Arguments
    ---------
    x : torch.Tensor
        ``(B, T, D)`` frame features.
    padding_mask : torch.BoolTensor, optional
        ``(B, T)``, True on padded frames.
    shift_div : int
        Reciprocal of the share of channels shifted per direction (>= 1; 2 or more when
        bidirectional).
    stride : int
        Number of frames moved (>= 1).
    bidirectional : bool
        Also shift a second share of channels backward in time.

    Returns
    -------
    torch.Tensor
        ``(B, T, D)``.
    """
    if padding_mask is not None:
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    num_frames, dim = x.shape[1], x.shape[2]
    fold = dim // shift_div
    forward = F.pad(x[..., :fold], (0, 0, stride, 0))[
        :, :num_frames
    ]  # (B, T, fold)
    if not bidirectional:
        return torch.cat([forward, x[..., fold:]], dim=-1)
    backward = F.pad(x[..., fold : 2 * fold], (0, 0, 0, stride))[
        :, stride : stride + num_frames
    ]
    return torch.cat([forward, backward, x[..., 2 * fold :]], dim=-1)


class ShiftBlock(torch.nn.Module):
    """Shiftformer block (the ``shift`` candidate): ``Norm(S + MLP(S))`` with ``S = shift(X)``.

    The authors' Shiftformer replaces the attention sub-layer of a post-LN transformer
    block by the temporal shift and keeps no residual or norm around it (their
    ``TransformerEncoder`` with ``shift=True``): the shifted features are the input of the
    MLP sub-layer and of its residual. MLP: ``Linear(D, F) -> GELU -> Linear(F, D) ->
    Dropout``.

    Arguments
    ---------
    dim : int
        Feature size D.
    ffn_dim : int
        Hidden size F of the MLP (4 D in Shiftformer).
    dropout : float
        Dropout on the MLP output (0 in the authors' code).
    shift_div, stride, bidirectional
        See :func:`temporal_shift` (Shiftformer: 4, 1, True).
    """

    def __init__(
        self,
        dim,
        ffn_dim,
        dropout=0.0,
        shift_div=4,
        stride=1,
        bidirectional=True,
    ):
        super().__init__()
        if (
            shift_div < (2 if bidirectional else 1)
            or dim // shift_div < 1
            or stride < 1
        ):
            raise ValueError(
                f"Cannot shift 1/{shift_div} of {dim} channels by {stride} frames "
                f"(bidirectional={bidirectional}): use shift_div <= {dim}, at least 2 when "
                "bidirectional, and stride >= 1."
            )
        self.shift_div = shift_div
        self.stride = stride
        self.bidirectional = bidirectional
        self.linear1 = torch.nn.Linear(dim, ffn_dim)
        self.activation = torch.nn.GELU()
        self.linear2 = torch.nn.Linear(ffn_dim, dim)
        self.dropout = torch.nn.Dropout(dropout)
        self.norm = torch.nn.LayerNorm(dim)

    @classmethod
    def from_widths(cls, dim, num_heads, ffn_dim, dropout):
        """Builds the block from the widths shared by all candidates (heads unused)."""
        return cls(dim, ffn_dim, dropout)

    def forward(self, x, padding_mask=None):
        """Shift, then the MLP sub-layer with residual and post-LayerNorm.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)`` frame features.
        padding_mask : torch.BoolTensor, optional
            ``(B, T)``, True on padded frames (they enter the shift as zeros).

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        shifted = temporal_shift(
            x, padding_mask, self.shift_div, self.stride, self.bidirectional
        )
        hidden = self.linear2(
            self.activation(self.linear1(shifted))
        )  # (B, T, D)
        return self.norm(shifted + self.dropout(hidden))


def window_attention_mask(padding_mask, num_frames, window, device=None):
    """Which keys each query may attend to: valid keys at most ``window // 2`` frames away.

    Arguments
    ---------
    padding_mask : torch.BoolTensor or None
        ``(B, T)``, True on padded frames.
    num_frames : int
        T.
    window : int or None
        Odd window length in frames, centred on the query; None: the whole utterance.
    device : torch.device, optional
        Device of the mask when ``padding_mask`` is None.

    Returns
    -------
    torch.BoolTensor
        ``(B or 1, 1, T, T)``, True where query (row) may see key (column). Every row has
        a True entry (a padded query sees itself), so softmax never meets an empty row.
    """
    device = padding_mask.device if padding_mask is not None else device
    positions = torch.arange(num_frames, device=device)
    allowed = torch.ones(
        num_frames, num_frames, dtype=torch.bool, device=device
    )
    if window is not None:
        allowed = (
            positions[:, None] - positions[None, :]
        ).abs() <= window // 2  # (T, T)
    allowed = allowed.unsqueeze(0)  # (1, T, T)
    if padding_mask is not None:
        allowed = allowed & ~padding_mask[:, None, :]  # (B, T, T)
        allowed = allowed | torch.eye(
            num_frames, dtype=torch.bool, device=device
        )
    return allowed.unsqueeze(1)


class WindowedSelfAttention(torch.nn.Module):
    """SpeechFormer's Speech-MSA: multi-head attention within a window around each frame.

    Each query frame t attends to the valid frames in ``[t - window // 2, t + window // 2]``
    (``window`` odd); ``window=None`` is global attention over the utterance. Projections
    as in the authors' code: one ``Linear(D, 3D)`` for Q, K, V and ``Linear(D, D)`` out.

    Differences from the authors' code, none of which changes a parameter: frames outside
    the utterance are masked out instead of entering as zero keys (which there take a share
    ``exp(0)`` of the softmax at both ends of the padded batch), so a result never depends
    on how much padding the batch has.

    Arguments
    ---------
    dim : int
        Feature size D; divisible by ``num_heads``.
    num_heads : int
        Attention heads.
    window : int or None
        Odd window length in frames, or None (global).
    attention_dropout : float
        Dropout on the attention probabilities (0.1 in SpeechFormer).
    """

    def __init__(self, dim, num_heads, window=None, attention_dropout=0.1):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"Feature size {dim} is not divisible by num_heads={num_heads}: choose a head "
                "count that divides it."
            )
        if window is not None and (window < 1 or window % 2 == 0):
            raise ValueError(
                f"The attention window must be an odd number of frames, got {window}."
            )
        self.num_heads = num_heads
        self.window = window
        self.attention_dropout = attention_dropout
        self.project_qkv = torch.nn.Linear(dim, 3 * dim)
        self.project_out = torch.nn.Linear(dim, dim)

    def forward(self, x, padding_mask=None):
        """Attends within the window.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)``.
        padding_mask : torch.BoolTensor, optional
            ``(B, T)``, True on padded frames.

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        batch, num_frames, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.project_qkv(x).view(
            batch, num_frames, 3, self.num_heads, head_dim
        )
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
        dropout = self.attention_dropout if self.training else 0.0
        if self.window is None or self.window >= 2 * num_frames - 1:
            allowed = window_attention_mask(
                padding_mask, num_frames, None, device=x.device
            )
            attended = F.scaled_dot_product_attention(
                query, key, value, attn_mask=allowed, dropout_p=dropout
            )  # (B, H, T, d)
        else:
            attended = self.banded_attention(
                query, key, value, padding_mask, dropout
            )
        return self.project_out(
            attended.transpose(1, 2).reshape(batch, num_frames, dim)
        )

    def banded_attention(self, query, key, value, padding_mask, dropout):
        """Attention over the ``window`` keys around each query, without a T x T matrix.

        The window is walked offset by offset: ``w`` element-wise products of ``(B, H, T, d)``
        tensors against the keys and values shifted by that offset (zero-padded, masked
        outside the utterance); the query's own frame is never masked, so no row is empty.
        Cost O(T w d) instead of the O(T^2 d) of a masked dense attention.

        Returns
        -------
        torch.Tensor
            ``(B, H, T, d)``.
        """
        batch, _, num_frames, head_dim = query.shape
        half = self.window // 2
        padded_keys = F.pad(key, (0, 0, half, half))  # (B, H, T + 2 half, d)
        padded_values = F.pad(value, (0, 0, half, half))
        valid = torch.ones(
            batch, num_frames, dtype=torch.bool, device=query.device
        )
        if padding_mask is not None:
            valid = ~padding_mask
        padded_valid = F.pad(
            valid, (half, half), value=False
        )  # (B, T + 2 half)
        query = query * head_dim**-0.5
        scores, allowed = [], []
        for offset in range(
            self.window
        ):  # key of frame t at offset: frame t + offset - half
            scores.append(
                (query * padded_keys[:, :, offset : offset + num_frames]).sum(
                    dim=-1
                )
            )
            allowed.append(
                padded_valid[:, offset : offset + num_frames] | (offset == half)
            )
        scores = torch.stack(scores, dim=-1)  # (B, H, T, w)
        allowed = torch.stack(allowed, dim=-1).unsqueeze(1)  # (B, 1, T, w)
        weights = torch.softmax(
            scores.masked_fill(~allowed, float("-inf")), dim=-1
        )
        weights = F.dropout(weights, p=dropout, training=dropout > 0)
        attended = 0.0
        for offset in range(self.window):
            attended = (
                attended
                + weights[..., offset : offset + 1]
                * padded_values[:, :, offset : offset + num_frames]
            )
        return attended


class SpeechFormerLayer(torch.nn.Module):
    """SpeechFormer encoder layer (the ``speechformer`` candidate), post-LN.

    ``Y = Norm1(X + Dropout(SpeechMSA(X + P)))``, then
    ``Norm2(Y + Dropout(Linear(Dropout(ReLU(Linear(Y))))))``; ``P`` is the optional
    positional encoding, added to the attention input only (not to the residual), as in
    the authors' ``SpeechFormerEncoder``.

    Arguments
    ---------
    dim : int
        Feature size D.
    num_heads : int
        Attention heads (8 in SpeechFormer).
    ffn_dim : int
        FFN hidden size (D / 2 in SpeechFormer).
    window : int or None
        Odd attention window in frames; None: global attention.
    dropout : float
        Dropout after the attention and in the FFN (0.1).
    attention_dropout : float
        Dropout on the attention probabilities (0.1).
    """

    def __init__(
        self,
        dim,
        num_heads,
        ffn_dim,
        window=None,
        dropout=0.1,
        attention_dropout=0.1,
    ):
        super().__init__()
        self.window = window
        self.attention = WindowedSelfAttention(
            dim, num_heads, window, attention_dropout
        )
        self.attention_norm = torch.nn.LayerNorm(dim)
        self.linear1 = torch.nn.Linear(dim, ffn_dim)
        self.linear2 = torch.nn.Linear(ffn_dim, dim)
        self.dropout = torch.nn.Dropout(dropout)
        self.final_norm = torch.nn.LayerNorm(dim)

    @classmethod
    def from_widths(cls, dim, num_heads, ffn_dim, dropout):
        """The candidate: a window of ``SPEECHFORMER_CANDIDATE_WINDOW`` frames."""
        return cls(
            dim,
            num_heads,
            ffn_dim,
            SPEECHFORMER_CANDIDATE_WINDOW,
            dropout,
            dropout,
        )

    def forward(self, x, padding_mask=None, position=None):
        """Windowed attention, then the FFN, each with residual and post-LayerNorm.

        Arguments
        ---------
        x : torch.Tensor
            ``(B, T, D)``.
        padding_mask : torch.BoolTensor, optional
            ``(B, T)``, True on padded frames.
        position : torch.Tensor, optional
            ``(T, D)`` positional encoding added to the attention input.

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        attention_input = x if position is None else x + position
        x = self.attention_norm(
            x + self.dropout(self.attention(attention_input, padding_mask))
        )
        hidden = self.dropout(F.relu(self.linear1(x)))  # (B, T, F)
        return self.final_norm(x + self.dropout(self.linear2(hidden)))


# The ``speechformer`` candidate's window: 21 frames, about the 400 ms of SpeechFormer's
# word-level stage at the 20 ms frame rate of WavLM / HuBERT / Vesper.
SPEECHFORMER_CANDIDATE_WINDOW = 21


BLOCKS = {
    "msa_ffn": TransformerEncoderBlock,
    "msa": SelfAttentionBlock,
    "ffn": FeedForwardBlock,
    "shift": ShiftBlock,
    "speechformer": SpeechFormerLayer,
}
# The BAS paper's search space, in candidate order: the column order of theta, and the
# order that breaks ties when the architecture is derived (the first candidate wins).
# ``shift`` and ``speechformer`` are opt-in (``candidates`` hparam).
CANDIDATES = ("msa_ffn", "msa", "ffn")


def build_block(name, dim, num_heads, ffn_dim, dropout):
    """Builds one candidate block with the widths shared by the whole search space.

    Arguments
    ---------
    name : str
        One of ``BLOCKS``: ``"msa_ffn"``, ``"msa"``, ``"ffn"``, ``"shift"``,
        ``"speechformer"``.
    dim : int
        Feature size D of the block's input and output.
    num_heads : int
        Attention heads (used by the blocks with attention).
    ffn_dim : int
        Feed-forward hidden size (used by the blocks with a feed-forward network).
    dropout : float
        Dropout probability.

    Returns
    -------
    torch.nn.Module
        A block mapping ``(B, T, D)`` and a ``(B, T)`` padding mask to ``(B, T, D)``.
    """
    if name not in BLOCKS:
        raise ValueError(
            f"Unknown block {name!r}: the architecture may only use {list(BLOCKS)}."
        )
    return BLOCKS[name].from_widths(dim, num_heads, ffn_dim, dropout)
