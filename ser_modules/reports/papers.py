"""The papers' published numbers and the names their tables give to models and upstreams.

* :data:`BAS_TABLE1`: BAS (Table 1), WA / UA on IEMOCAP and WF1 on MELD, in %;
* :data:`VESPER_TABLE8` / :data:`VESPER_TABLE3`: Vesper's SUPERB classifier on the weighted
  sum of layers or the last layer (Tables VIII and III), as fractions;
* :data:`VESPER_TABLE4`: Vesper's Table IV downstream models (Shiftformer, SpeechFormer-S).

:func:`paper_model_name` and :func:`paper_upstream_name` give a run the row name the papers
use, from the ``identity`` its ``results.json`` records (:mod:`ser_modules.run_identity`)
and nothing else: ``3L-BAS``, ``SUPERB classifier``, ``WavLM Large``, ``Vesper-12`` ...
"""

import re

from ser_modules.metrics import METRIC_NAMES

# BAS paper, Table 1: IEMOCAP WA / UA (mean of the 5 folds) and MELD WF1, in %.
# The WavLM 3L-baseline MELD WF1 is not legible in the paper.
BAS_TABLE1 = {
    ("HuBERT Large", "3L-baseline"): {
        ("IEMOCAP", "WA"): 68.95,
        ("IEMOCAP", "UA"): 70.61,
        ("MELD", "WF1"): 39.12,
    },
    ("HuBERT Large", "4L-baseline"): {
        ("IEMOCAP", "WA"): 68.16,
        ("IEMOCAP", "UA"): 69.61,
        ("MELD", "WF1"): 44.96,
    },
    ("HuBERT Large", "simple-FFN"): {
        ("IEMOCAP", "WA"): 71.57,
        ("IEMOCAP", "UA"): 72.73,
        ("MELD", "WF1"): 44.80,
    },
    ("HuBERT Large", "3L-BAS"): {
        ("IEMOCAP", "WA"): 72.24,
        ("IEMOCAP", "UA"): 73.19,
        ("MELD", "WF1"): 45.08,
    },
    ("HuBERT Large", "4L-BAS"): {
        ("IEMOCAP", "WA"): 72.35,
        ("IEMOCAP", "UA"): 73.35,
        ("MELD", "WF1"): 45.24,
    },
    ("WavLM Large", "3L-baseline"): {
        ("IEMOCAP", "WA"): 70.74,
        ("IEMOCAP", "UA"): 72.09,
    },
    ("WavLM Large", "4L-baseline"): {
        ("IEMOCAP", "WA"): 70.08,
        ("IEMOCAP", "UA"): 71.65,
        ("MELD", "WF1"): 45.75,
    },
    ("WavLM Large", "simple-FFN"): {
        ("IEMOCAP", "WA"): 72.53,
        ("IEMOCAP", "UA"): 73.70,
        ("MELD", "WF1"): 46.25,
    },
    ("WavLM Large", "3L-BAS"): {
        ("IEMOCAP", "WA"): 73.92,
        ("IEMOCAP", "UA"): 74.22,
        ("MELD", "WF1"): 46.18,
    },
    ("WavLM Large", "4L-BAS"): {
        ("IEMOCAP", "WA"): 74.03,
        ("IEMOCAP", "UA"): 74.95,
        ("MELD", "WF1"): 47.18,
    },
}


def _vesper_scores(iemocap, meld, cremad):
    """``{(dataset, metric): value}`` from three (WA, UA, WF1) triples (None = not reported)."""
    scores = {}
    for dataset, triple in (
        ("IEMOCAP", iemocap),
        ("MELD", meld),
        ("CREMA-D", cremad),
    ):
        for metric, value in zip(METRIC_NAMES, triple):
            if value is not None:
                scores[(dataset, metric)] = value
    return scores


# Vesper paper, Table VIII (its "Weighted" rows are Table III): SUPERB classifier on the
# weighted sum of all layers or on the last layer only. WavLM's weighted IEMOCAP WA comes
# from the WavLM paper; UA and WF1 are not reported there.
VESPER_TABLE8 = {
    ("WavLM Base", "weighted"): _vesper_scores(
        (0.659, None, None), (0.499, 0.201, 0.400), (0.599, 0.599, 0.600)
    ),
    ("WavLM Base", "last"): _vesper_scores(
        (0.557, 0.558, 0.546), (0.481, 0.143, 0.313), (0.563, 0.564, 0.565)
    ),
    ("WavLM Large", "weighted"): _vesper_scores(
        (0.706, None, None), (0.542, 0.253, 0.476), (0.757, 0.762, 0.755)
    ),
    ("WavLM Large", "last"): _vesper_scores(
        (0.686, 0.701, 0.683), (0.522, 0.263, 0.454), (0.694, 0.700, 0.689)
    ),
    ("Vesper-4", "weighted"): _vesper_scores(
        (0.684, 0.693, 0.683), (0.501, 0.250, 0.457), (0.734, 0.737, 0.733)
    ),
    ("Vesper-4", "last"): _vesper_scores(
        (0.681, 0.699, 0.679), (0.504, 0.260, 0.468), (0.719, 0.723, 0.714)
    ),
    ("Vesper-12", "weighted"): _vesper_scores(
        (0.707, 0.708, 0.706), (0.535, 0.268, 0.480), (0.772, 0.776, 0.768)
    ),
    ("Vesper-12", "last"): _vesper_scores(
        (0.705, 0.712, 0.705), (0.526, 0.266, 0.476), (0.774, 0.778, 0.772)
    ),
}
VESPER_TABLE3 = {
    upstream: scores
    for (upstream, source), scores in VESPER_TABLE8.items()
    if source == "weighted"
}

# Vesper paper, Table IV: the SER-specific downstream models Shiftformer [42] and
# SpeechFormer-S [65] on each upstream, (WA, UA, WF1) per dataset. The paper does not say
# which upstream layers feed them: its numbers are shown beside runs of any classifier input.
SHIFTFORMER = "Shiftformer"
SPEECHFORMER_S = "SpeechFormer-S"
TABLE4_MODELS = (SHIFTFORMER, SPEECHFORMER_S)
_TABLE4_PRINTED = {  # (dataset, upstream): (Shiftformer WA, UA, WF1, SpeechFormer-S WA, UA, WF1)
    ("IEMOCAP", "WavLM Base"): (0.615, 0.624, 0.609, 0.608, 0.613, 0.602),
    ("IEMOCAP", "Vesper-4"): (0.730, 0.739, 0.730, 0.711, 0.725, 0.711),
    ("IEMOCAP", "WavLM Large"): (0.727, 0.736, 0.727, 0.721, 0.729, 0.719),
    ("IEMOCAP", "Vesper-12"): (0.737, 0.743, 0.735, 0.729, 0.731, 0.725),
    ("MELD", "WavLM Base"): (0.480, 0.212, 0.424, 0.481, 0.208, 0.414),
    ("MELD", "Vesper-4"): (0.479, 0.240, 0.445, 0.489, 0.260, 0.441),
    ("MELD", "WavLM Large"): (0.527, 0.265, 0.476, 0.493, 0.281, 0.474),
    ("MELD", "Vesper-12"): (0.530, 0.262, 0.479, 0.507, 0.276, 0.477),
    ("CREMA-D", "WavLM Base"): (0.709, 0.712, 0.708, 0.696, 0.698, 0.691),
    ("CREMA-D", "Vesper-4"): (0.780, 0.783, 0.778, 0.761, 0.764, 0.760),
    ("CREMA-D", "WavLM Large"): (0.751, 0.754, 0.751, 0.770, 0.772, 0.769),
    ("CREMA-D", "Vesper-12"): (0.806, 0.809, 0.804, 0.794, 0.797, 0.795),
}
VESPER_TABLE4 = {
    (dataset, upstream, model): dict(
        zip(METRIC_NAMES, values[3 * index : 3 * index + 3])
    )
    for (dataset, upstream), values in _TABLE4_PRINTED.items()
    for index, model in enumerate(TABLE4_MODELS)
}

# Display orders: the papers' datasets first, the BAS Table 1 models in its order.
DATASET_ORDER = ("IEMOCAP", "MELD", "CREMA-D")
MODEL_ORDER = (
    "3L-baseline",
    "4L-baseline",
    "simple-FFN",
    "3L-BAS",
    "4L-BAS",
    "SUPERB classifier",
)
# Upstream families in display order (name prefixes).
UPSTREAM_ORDER = ("Fbank", "HuBERT", "WavLM", "Vesper")
SUPERB = "SUPERB classifier"
# Hugging Face model types and the papers' names of their families.
MODEL_TYPE_FAMILIES = {
    "wavlm": "WavLM",
    "hubert": "HuBERT",
    "wav2vec2": "wav2vec 2.0",
}
# The papers' sizes by (layers, width) of config.json.
PAPER_SIZES = {(24, 1024): "Large", (12, 768): "Base"}
# openSMILE feature sets (``identity["upstream"]["feature_set"]``) and levels as named in reports.
OPENSMILE_NAMES = {"eGeMAPSv02": "eGeMAPS", "ComParE_2016": "ComParE"}
OPENSMILE_LEVELS = {"lld": "LLDs", "functionals": "functionals"}
# Upstreams of hand-crafted features: one representation, no classifier-input choice.
FEATURE_KINDS = ("fbank", "opensmile")


def paper_model_name(model):
    """The BAS Table 1 / Vesper Table IV name of a run's downstream model.

    ``transformer`` with ``num_layers=4`` is ``4L-baseline``, a BAS search of 4 layers
    ``4L-BAS``, ``ffn`` the ``simple-FFN``, ``superb`` the ``SUPERB classifier``.

    Arguments
    ---------
    model : dict
        ``identity["model"]`` of a ``results.json``.
    """
    name = model["downstream_model"]
    if name == "blocks":
        if model.get("search"):
            return f"{model['search_layers']}L-BAS"
        architecture = model.get("architecture") or []
        return (
            "blocks " + "-".join(map(str, architecture))
            if architecture
            else "blocks"
        )
    if name == "transformer":
        return f"{model['num_layers']}L-baseline"
    if name == "ffn":
        return "simple-FFN"
    if name == "superb":
        return SUPERB
    if name == "shiftformer":
        return SHIFTFORMER
    if name == "speechformer":
        layers = list(model.get("speechformer_layers") or [])
        expand = list(model.get("speechformer_expand") or [])
        if layers == [2, 2, 4, 4] and expand in ([1, 1, 1], [1, 1, 2]):
            return SPEECHFORMER_S if expand == [1, 1, 1] else "SpeechFormer-B"
        return f"SpeechFormer (layers {layers}, expand {expand})"
    if name == "linear_svm":
        return "linear SVM"
    return str(name)


def paper_upstream_name(upstream):
    """The papers' name of a run's upstream: ``WavLM Large``, ``Vesper-12``, ``Fbank`` ...

    The family is the ``model_type`` of the model's ``config.json``, the size its
    ``(num_hidden_layers, hidden_size)``: 24 x 1024 is Large, 12 x 768 Base. A Vesper
    export marks itself in its ``config.json`` (``vesper``, recorded in the identity) and is
    ``Vesper-N`` whatever its width; a WavLM model of WavLM Large's width with N < 24 layers
    and no mark (an export older than the mark) is ``Vesper-N`` too. A model of another
    shape is named by its shape, so that it never matches a paper's row.

    Arguments
    ---------
    upstream : dict
        ``identity["upstream"]`` of a ``results.json``.
    """
    kind = upstream["kind"]
    if kind == "fbank":
        return "Fbank"
    if kind == "opensmile":
        feature_set = upstream["feature_set"]
        level = upstream["feature_level"]
        return (
            f"{OPENSMILE_NAMES.get(feature_set, feature_set)} "
            f"{OPENSMILE_LEVELS.get(level, level)}"
        )
    model_type = upstream.get("model_type") or kind
    family = MODEL_TYPE_FAMILIES.get(model_type, model_type)
    layers, width = upstream["num_hidden_layers"], upstream["hidden_size"]
    if upstream.get("vesper") or (
        model_type == "wavlm" and width == 1024 and layers < 24
    ):
        return f"Vesper-{layers}"
    size = PAPER_SIZES.get((layers, width))
    if size is None:
        return f"{family} ({layers} layers, {width} dims)"
    return f"{family} {size}"


def dataset_order(datasets):
    """The papers' datasets first (IEMOCAP, MELD, CREMA-D), then the others by name."""
    known = [name for name in DATASET_ORDER if name in datasets]
    return known + sorted(set(datasets) - set(DATASET_ORDER))


def upstream_order(name):
    """Sort key of an upstream name: Fbank, HuBERT, WavLM, Vesper; Base before Large."""
    family = next(
        (
            index
            for index, prefix in enumerate(UPSTREAM_ORDER)
            if name.startswith(prefix)
        ),
        len(UPSTREAM_ORDER),
    )
    size = {"Base": 0, "Base+": 1, "Large": 2}.get(name.split(" ")[-1], 3)
    digits = re.findall(r"\d+", name)
    return (family, size, int(digits[0]) if digits else 0, name)


def model_order(name):
    """Sort key of a model name: the BAS Table 1 order, then the others by name."""
    return (
        MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER),
        name,
    )
