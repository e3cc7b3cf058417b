"""The three candidate blocks of the BAS search space (BAS paper, section 2).

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
"""

import torch


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
        attended = self.self_attention(x, padding_mask)  # (B, T, D) = Norm1(X + MSA(X))
        return self.norm(attended + self.feed_forward(attended))


BLOCKS = {
    "msa_ffn": TransformerEncoderBlock,
    "msa": SelfAttentionBlock,
    "ffn": FeedForwardBlock,
}
# The candidate order of the search space: column order of theta, and the order that
# breaks ties when the architecture is derived (the first candidate wins).
CANDIDATES = tuple(BLOCKS)


def build_block(name, dim, num_heads, ffn_dim, dropout):
    """Builds one candidate block with the widths shared by the whole search space.

    Arguments
    ---------
    name : str
        One of ``BLOCKS``: ``"msa_ffn"``, ``"msa"``, ``"ffn"``.
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
