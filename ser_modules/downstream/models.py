"""Downstream models on frozen upstream features: the SUPERB classifier and block stacks.

Every downstream model answers ``model(feats, lens) -> logits`` with ``feats`` of shape
``(B, T, D)`` and ``lens`` the SpeechBrain relative lengths ``(B,)`` (1.0 = longest);
padded frames never change a result.

- ``LayerCombiner`` turns the layer-wise upstream output ``(B, N, T, D)`` into one
  ``(B, T, D)`` input (SUPERB weighted sum, the last layer, or a chosen layer).
- ``SuperbClassifier`` is the Vesper / SUPERB evaluation head.
- ``BlockStackClassifier`` is the BAS macro-architecture with a fixed list of blocks:
  the 3L/4L transformer baselines, the simple-FFN baseline and the derived BAS networks
  are all instances of it.
"""

import torch
from speechbrain.dataio.dataio import length_to_mask

from ser_modules.downstream.blocks import build_block


def valid_frame_mask(lens, num_frames):
    """Boolean mask of the valid frames of each utterance.

    The absolute length is ``round(lens * num_frames)``, at least 1: an utterance whose
    length rounds to 0 frames keeps its first frame as valid, so that attention and mean
    pooling stay defined (no NaN) for it.

    Arguments
    ---------
    lens : torch.Tensor
        ``(B,)`` relative lengths in [0, 1].
    num_frames : int
        T, the padded number of frames.

    Returns
    -------
    torch.BoolTensor
        ``(B, T)``, True on valid frames.
    """
    frames = torch.round(lens * num_frames).clamp(min=1)  # (B,)
    return length_to_mask(frames, max_len=num_frames, dtype=torch.bool)


def masked_mean_pool(x, lens):
    """Mean of the valid frames of each utterance.

    Padded frames are excluded with ``torch.where`` rather than a product, so even NaN or
    infinite padding cannot reach the result. An utterance with 0 valid frames is pooled
    over its first frame (see ``valid_frame_mask``).

    Arguments
    ---------
    x : torch.Tensor
        ``(B, T, D)`` frame features.
    lens : torch.Tensor
        ``(B,)`` relative lengths.

    Returns
    -------
    torch.Tensor
        ``(B, D)``.
    """
    valid = valid_frame_mask(lens, x.shape[1]).unsqueeze(-1)  # (B, T, 1)
    summed = torch.where(valid, x, torch.zeros_like(x)).sum(dim=1)  # (B, D)
    return summed / valid.sum(dim=1).to(x.dtype)  # (B, D)


def masked_stats_pool(x, lens):
    """Mean and standard deviation of the valid frames of each utterance, concatenated.

    Statistics pooling (as in x-vectors): the spread of a frame feature over the utterance
    (how much pitch or loudness moves) is a cue that the mean alone loses. The standard
    deviation is the population one over the valid frames, with a small floor so that its
    gradient stays finite on a constant (or one-frame) utterance.

    Arguments
    ---------
    x : torch.Tensor
        ``(B, T, D)`` frame features.
    lens : torch.Tensor
        ``(B,)`` relative lengths.

    Returns
    -------
    torch.Tensor
        ``(B, 2 D)``: the mean, then the standard deviation.
    """
    valid = valid_frame_mask(lens, x.shape[1]).unsqueeze(-1)  # (B, T, 1)
    mean = masked_mean_pool(x, lens)  # (B, D)
    centred = torch.where(
        valid, x - mean.unsqueeze(1), torch.zeros_like(x)
    )  # (B, T, D)
    variance = centred.pow(2).sum(dim=1) / valid.sum(dim=1).to(
        x.dtype
    )  # (B, D)
    return torch.cat(
        [mean, torch.sqrt(variance.clamp(min=1e-8))], dim=-1
    )  # (B, 2 D)


POOLINGS = {"mean": (masked_mean_pool, 1), "stats": (masked_stats_pool, 2)}


def pooling_function(pooling):
    """``(pool(x (B, T, D), lens) -> (B, k D), k)`` of a pooling name (``mean`` or ``stats``)."""
    if pooling not in POOLINGS:
        raise ValueError(
            f"Unknown pooling {pooling!r}: use one of {sorted(POOLINGS)}."
        )
    return POOLINGS[pooling]


class LayerCombiner(torch.nn.Module):
    """Combines the layer-wise features of an upstream into one feature sequence.

    Arguments
    ---------
    num_layers : int
        N, the number of stacked representations (e.g. 25 for WavLM Large: the CNN
        output plus 24 transformer layers).
    mode : str or int
        ``"weighted_sum"``: SUPERB's softmax-weighted sum with learnable weights
        initialised to zeros (a plain average at the start); ``"last"``: the last layer;
        an int: that layer index (Python indexing, negative allowed).
    normalize : bool
        Apply a parameter-free LayerNorm to every layer before the weighted sum (s3prl's
        ``normalize`` option; off in SUPERB's default and in Vesper's evaluation).
    """

    def __init__(self, num_layers, mode="weighted_sum", normalize=False):
        super().__init__()
        self.num_layers = num_layers
        self.mode = mode
        self.normalize = normalize
        if mode == "weighted_sum":
            self.layer_weights = torch.nn.Parameter(torch.zeros(num_layers))
        elif mode == "last":
            self.layer_index = num_layers - 1
        elif isinstance(mode, int) and not isinstance(mode, bool):
            if not -num_layers <= mode < num_layers:
                raise ValueError(
                    f"Layer index {mode} is out of range for {num_layers} upstream "
                    f"layers: use an index in [{-num_layers}, {num_layers - 1}]."
                )
            self.layer_index = mode % num_layers
        else:
            raise ValueError(
                f"Unknown layer combination mode {mode!r}: use 'weighted_sum', 'last' "
                "or an integer layer index."
            )

    def forward(self, layers):
        """Combines the layers.

        Arguments
        ---------
        layers : torch.Tensor
            ``(B, N, T, D)`` stacked upstream representations.

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        if layers.shape[1] != self.num_layers:
            raise ValueError(
                f"Expected {self.num_layers} upstream layers in dimension 1, got "
                f"{layers.shape[1]} (input shape {tuple(layers.shape)}): set num_layers "
                "to the upstream's number of hidden states."
            )
        if self.mode != "weighted_sum":
            return layers[:, self.layer_index]
        if self.normalize:
            layers = torch.nn.functional.layer_norm(layers, layers.shape[-1:])
        weights = torch.softmax(self.layer_weights, dim=0)  # (N,)
        return torch.einsum("bntd,n->btd", layers, weights)  # (B, T, D)


class SuperbClassifier(torch.nn.Module):
    """SUPERB / Vesper evaluation head: ``Linear(D, H) -> masked mean pool -> Linear(H, C)``.

    No nonlinearity between the two linear layers, as in the Vesper paper (IV-C: "two
    fully connected layers with an average pooling layer in between, consistent with the
    SUPERB benchmark") and s3prl's emotion recipe (projector, mean pooling, linear).

    Arguments
    ---------
    input_dim : int
        D, the upstream feature size.
    num_classes : int
        C, the number of emotion classes.
    hidden : int
        H, the projection size (256 in Vesper and SUPERB).
    pooling : str
        ``"mean"`` (the papers) or ``"stats"`` (mean and standard deviation; the classifier
        then reads 2 H values).
    """

    def __init__(self, input_dim, num_classes, hidden=256, pooling="mean"):
        super().__init__()
        self.pooling = pooling
        self.pool, factor = pooling_function(pooling)
        self.projector = torch.nn.Linear(input_dim, hidden)
        self.classifier = torch.nn.Linear(factor * hidden, num_classes)

    def forward(self, feats, lens):
        """Classifies each utterance.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, D)`` upstream features.
        lens : torch.Tensor
            ``(B,)`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``(B, C)`` logits.
        """
        projected = self.projector(feats)  # (B, T, H)
        return self.classifier(self.pool(projected, lens))  # (B, C)


class LayerStackClassifier(torch.nn.Module):
    """BAS macro-architecture around a list of layers, shared by the fixed and searched nets.

    ``input projection -> layers in sequence (no skips between layers) -> masked mean
    pooling -> Linear(model_dim, C)``. ``BlockStackClassifier`` and ``BASSuperNet`` both
    derive from it so that their shared parts have identical parameter names
    (``input_projection.*``, ``layers.<l>.*``, ``classifier.*``).

    The input projection is ``Linear(input_dim, model_dim)`` only when ``model_dim`` is
    given and differs from ``input_dim``; by default (``model_dim=None``) it is the
    identity. The paper puts nothing in front of the first searched layer, and its
    finding is precisely about what that layer does to the raw SSL features: a learned
    projection there would be an FFN-like map of its own and blur the comparison. Use
    ``model_dim`` to save compute or when the head count does not divide the feature size.

    Arguments
    ---------
    input_dim : int
        D, the upstream feature size.
    num_classes : int
        C, the number of classes.
    model_dim : int or None
        Width of the layers; None means ``input_dim`` (no projection).
    layers : list of torch.nn.Module
        The layers; each maps ``(B, T, model_dim)`` to ``(B, T, model_dim)``.
    pooling : str
        ``"mean"`` (the paper) or ``"stats"`` (mean and standard deviation).
    """

    def __init__(
        self, input_dim, num_classes, model_dim, layers, pooling="mean"
    ):
        super().__init__()
        self.pooling = pooling
        self.pool, factor = pooling_function(pooling)
        model_dim = input_dim if model_dim is None else model_dim
        if model_dim == input_dim:
            self.input_projection = torch.nn.Identity()
        else:
            self.input_projection = torch.nn.Linear(input_dim, model_dim)
        self.layers = torch.nn.ModuleList(layers)
        self.classifier = torch.nn.Linear(factor * model_dim, num_classes)

    def apply_layer(self, layer, x, padding_mask):
        """Runs one layer; the super net overrides this to pass its temperature."""
        return layer(x, padding_mask)

    def forward(self, feats, lens):
        """Classifies each utterance.

        Arguments
        ---------
        feats : torch.Tensor
            ``(B, T, D)`` upstream features.
        lens : torch.Tensor
            ``(B,)`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``(B, C)`` logits.
        """
        padding_mask = ~valid_frame_mask(
            lens, feats.shape[1]
        )  # (B, T), True = padded
        # Zero the padding first: attention gives masked keys weight 0, but 0 * NaN or
        # 0 * inf from garbage padding would still be NaN.
        x = feats.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # (B, T, D)
        x = self.input_projection(x)  # (B, T, model_dim)
        for layer in self.layers:
            x = self.apply_layer(layer, x, padding_mask)  # (B, T, model_dim)
        return self.classifier(self.pool(x, lens))  # (B, C)


class BlockStackClassifier(LayerStackClassifier):
    """A fixed sequence of BAS blocks, then masked mean pooling and a linear classifier.

    One implementation for every stand-alone network of the BAS recipe:
    ``["msa_ffn"] * L`` is the L-layer vanilla transformer baseline, ``["ffn"]`` the
    simple-FFN baseline, and the architecture derived from a super net (for example
    ``["ffn", "msa", "msa_ffn", "msa"]``) the BAS network.

    Width defaults, which the paper does not give: 8 heads, FFN width 2048 and dropout
    0.1 are the vanilla transformer's (the paper's reference [19], which its blocks are
    taken from); the layers work at the upstream width (1024 for WavLM / HuBERT Large).

    Arguments
    ---------
    input_dim : int
        D, the upstream feature size.
    num_classes : int
        C, the number of classes.
    architecture : list of str
        Block names from ``blocks.BLOCKS``, first layer first.
    model_dim : int or None
        Width of the blocks; None (default) uses ``input_dim`` with no input projection.
    num_heads : int
        Attention heads of the blocks with attention.
    ffn_dim : int
        Hidden size of the blocks with a feed-forward network.
    dropout : float
        Dropout inside the blocks.
    pooling : str
        ``"mean"`` (the paper) or ``"stats"`` (mean and standard deviation).
    """

    def __init__(
        self,
        input_dim,
        num_classes,
        architecture,
        model_dim=None,
        num_heads=8,
        ffn_dim=2048,
        dropout=0.1,
        pooling="mean",
    ):
        if len(architecture) == 0:
            raise ValueError(
                "The architecture needs at least one block, got an empty list."
            )
        width = input_dim if model_dim is None else model_dim
        layers = [
            build_block(name, width, num_heads, ffn_dim, dropout)
            for name in architecture
        ]
        super().__init__(
            input_dim, num_classes, model_dim, layers, pooling=pooling
        )
        self.architecture = list(architecture)
