"""One entry point for every downstream model, so a recipe switches models by an hparam.

``downstream_model`` in the YAML files picks the model:

* ``superb``: the SUPERB / Vesper classifier (Linear -> masked mean pooling -> Linear),
* ``transformer``: ``num_layers`` vanilla transformer blocks (``msa_ffn``), the BAS baselines,
* ``ffn``: the simple-FFN baseline of BAS (one ``ffn`` block),
* ``blocks``: any block sequence, e.g. the architecture a BAS search derived,
* ``shiftformer``: Shiftformer (Shen et al. 2023), a Table IV model of the Vesper paper,
* ``speechformer``: SpeechFormer (Chen et al. 2022), -S by default, the other Table IV model.

The two Table IV models take their own options (``shift_*``, ``spec_augment``,
``frame_hop_ms``, ``speechformer_*``) with the authors' values as defaults, and ignore
``num_layers`` / ``ffn_dim`` / ``hidden`` of the block stacks: their widths follow the input
size as in the authors' code. They share ``num_heads`` (SpeechFormer), ``dropout`` and
``model_dim`` (Shiftformer) with the other models.
"""

from ser_modules.downstream.models import BlockStackClassifier, SuperbClassifier
from ser_modules.downstream.shiftformer import ShiftformerClassifier
from ser_modules.downstream.speechformer import SpeechFormerClassifier

DOWNSTREAM_MODELS = (
    "superb",
    "transformer",
    "ffn",
    "blocks",
    "shiftformer",
    "speechformer",
)


def downstream_architecture(model, num_layers=None, architecture=None):
    """The block sequence of a block-stack model (``None`` for the other models)."""
    if model in ("superb", "shiftformer", "speechformer"):
        return None
    if model == "transformer":
        if not num_layers or int(num_layers) < 1:
            raise ValueError(
                "downstream_model=transformer needs num_layers >= 1."
            )
        return ["msa_ffn"] * int(num_layers)
    if model == "ffn":
        return ["ffn"]
    if model == "blocks":
        if not architecture:
            raise ValueError(
                "downstream_model=blocks needs an architecture, e.g. [ffn, msa, msa_ffn]."
            )
        return list(architecture)
    raise ValueError(
        f"Unknown downstream_model {model!r}: choose one of {DOWNSTREAM_MODELS}."
    )


def build_downstream(
    model,
    input_dim,
    num_classes,
    num_layers=None,
    architecture=None,
    hidden=256,
    model_dim=None,
    num_heads=8,
    ffn_dim=2048,
    dropout=0.1,
    pooling="mean",
    shift_layers=2,
    shift_mlp_ratio=4,
    shift_div=4,
    shift_stride=1,
    shift_bidirectional=True,
    spec_augment=True,
    frame_hop_ms=20,
    speechformer_layers=(2, 2, 4, 4),
    speechformer_expand=(1, 1, 1),
):
    """Build the downstream model named ``model`` (see the module docstring).

    Arguments
    ---------
    pooling
        ``"mean"`` (the papers) or ``"stats"`` (mean and standard deviation) for the
        SUPERB classifier and the block stacks.
    shift_layers, shift_mlp_ratio, shift_div, shift_stride, shift_bidirectional, spec_augment
        Shiftformer: blocks (2), MLP width / D (4), 1 / share of channels shifted per
        direction (4), frames shifted (1), both directions (True), SpecAugment (True).
    frame_hop_ms, speechformer_layers, speechformer_expand
        SpeechFormer: hop of the input frames in ms (20 for WavLM / HuBERT / Vesper),
        layers per stage ([2, 2, 4, 4]), width multiplier of each merge ([1, 1, 1]: -S).

    Returns
    -------
    torch.nn.Module
        ``forward(feats (B, T, D), lens (B,)) -> logits (B, C)``.
    """
    if model == "shiftformer":
        return ShiftformerClassifier(
            input_dim,
            num_classes,
            num_layers=int(shift_layers),
            mlp_ratio=int(shift_mlp_ratio),
            shift_div=int(shift_div),
            shift_stride=int(shift_stride),
            bidirectional=bool(shift_bidirectional),
            dropout=dropout,
            spec_augment=bool(spec_augment),
            model_dim=model_dim,
        )
    if model == "speechformer":
        if model_dim is not None:
            raise ValueError(
                "downstream_model=speechformer works at the input width (its merging blocks set "
                f"the widths after it): leave block_dim / model_dim empty, got {model_dim}."
            )
        return SpeechFormerClassifier(
            input_dim,
            num_classes,
            frame_hop_ms=frame_hop_ms,
            stage_layers=speechformer_layers,
            expand=speechformer_expand,
            num_heads=num_heads,
            dropout=dropout,
            attention_dropout=dropout,
        )
    blocks = downstream_architecture(model, num_layers, architecture)
    if blocks is None:
        return SuperbClassifier(
            input_dim, num_classes, hidden=hidden, pooling=pooling
        )
    return BlockStackClassifier(
        input_dim,
        num_classes,
        blocks,
        model_dim=model_dim,
        num_heads=num_heads,
        ffn_dim=ffn_dim,
        dropout=dropout,
        pooling=pooling,
    )
