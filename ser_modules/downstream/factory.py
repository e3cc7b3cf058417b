"""One entry point for every downstream model, so a recipe switches models by an hparam.

``downstream_model`` in the YAML files picks the model:

* ``superb``: the SUPERB / Vesper classifier (Linear -> masked mean pooling -> Linear),
* ``transformer``: ``num_layers`` vanilla transformer blocks (``msa_ffn``), the BAS baselines,
* ``ffn``: the simple-FFN baseline of BAS (one ``ffn`` block),
* ``blocks``: any block sequence, e.g. the architecture a BAS search derived.
"""

from ser_modules.downstream.models import BlockStackClassifier, SuperbClassifier

DOWNSTREAM_MODELS = ("superb", "transformer", "ffn", "blocks")


def downstream_architecture(model, num_layers=None, architecture=None):
    """The block sequence of a block-stack model (``None`` for the SUPERB classifier)."""
    if model == "superb":
        return None
    if model == "transformer":
        if not num_layers or int(num_layers) < 1:
            raise ValueError("downstream_model=transformer needs num_layers >= 1.")
        return ["msa_ffn"] * int(num_layers)
    if model == "ffn":
        return ["ffn"]
    if model == "blocks":
        if not architecture:
            raise ValueError("downstream_model=blocks needs an architecture, e.g. [ffn, msa, msa_ffn].")
        return list(architecture)
    raise ValueError(f"Unknown downstream_model {model!r}: choose one of {DOWNSTREAM_MODELS}.")


def build_downstream(model, input_dim, num_classes, num_layers=None, architecture=None,
                     hidden=256, model_dim=None, num_heads=8, ffn_dim=2048, dropout=0.1, pooling="mean"):
    """Build the downstream model named ``model`` (see the module docstring).

    ``pooling`` is ``"mean"`` (the papers) or ``"stats"`` (mean and standard deviation).

    Returns
    -------
    torch.nn.Module
        ``forward(feats (B, T, D), lens (B,)) -> logits (B, C)``.
    """
    blocks = downstream_architecture(model, num_layers, architecture)
    if blocks is None:
        return SuperbClassifier(input_dim, num_classes, hidden=hidden, pooling=pooling)
    return BlockStackClassifier(
        input_dim, num_classes, blocks, model_dim=model_dim, num_heads=num_heads,
        ffn_dim=ffn_dim, dropout=dropout, pooling=pooling,
    )
