"""What a run was, recorded in its ``results.json`` so that nothing else is needed later.

Reports, comparisons and anyone reading a result years later must be able to say which
dataset, protocol, downstream model and upstream produced it without the hparams file,
the upstream folder or the run's other files, which get edited, moved or deleted. Every
writer of ``results.json`` (:func:`ser_modules.recipe.summarise`: the neural recipes,
their BAS searches and Table IV runs, the classic baseline) and the architecture ranking
(``ranking.json``) stores ``"results_format": RESULTS_FORMAT`` and an ``"identity"``:

* ``dataset``;
* ``protocol``: every option of the preparation (defaults included), the split names run,
  the sha256 of their manifests, the checkpoint-selection set and metric, the crops;
* ``model``: ``downstream_model`` and the settings of that model (layers, heads, FFN
  width, pooling, the BAS search space, the Table IV models' options ...), and
  ``layer_selection``, the classifier input;
* ``upstream``: its ``kind``, for a Hugging Face folder its ``model_type``,
  ``num_hidden_layers`` and ``hidden_size`` (from ``config.json``), the hidden states
  used, the number of representations the downstream sees, their ``width``, the
  ``source`` folder (for information), ``content_sha256`` (a digest of the upstream's
  identity without its path: config, weights and options by sha256) and that identity;
* ``hparams_file``: path, name and sha256 of the YAML text;
* ``hparams``: every plain-valued effective hparam (after overrides and dataset defaults);
* ``overrides``: what the recipe changed in the YAML (the dataset's defaults and the
  command line), ``seed`` and ``code`` (:func:`ser_modules.fingerprint.code_version`).

A ``results.json`` without them (written before ``results_format`` 2) is refused by the
reports with the file named: they never guess a run's model or upstream from file or
folder names. Re-run the recipe into a new ``--output_folder`` to get one.
"""

import inspect
import json
import os

from ser_modules.fingerprint import (
    code_version,
    file_sha256,
    json_sha256,
    plain_hparams,
    text_sha256,
)

# Version of the results.json layout; 2 = the first with an "identity".
RESULTS_FORMAT = 2
# Preparation arguments that say where files are, not which split is made.
PREPARATION_PLUMBING = ("data_folder", "save_folder", "skip_prep")
# Settings of each downstream model (hparam names, as the YAML files spell them).
MODEL_SETTINGS = {
    "superb": ("classifier_hidden", "pooling"),
    "transformer": (
        "num_layers",
        "num_heads",
        "ffn_dim",
        "block_dim",
        "dropout",
        "pooling",
    ),
    "ffn": ("ffn_dim", "block_dim", "dropout", "pooling"),
    "blocks": (
        "architecture",
        "num_heads",
        "ffn_dim",
        "block_dim",
        "dropout",
        "pooling",
    ),
    "shiftformer": (
        "shift_layers",
        "shift_mlp_ratio",
        "shift_div",
        "shift_stride",
        "shift_bidirectional",
        "spec_augment",
        "block_dim",
        "dropout",
    ),
    "speechformer": (
        "speechformer_layers",
        "speechformer_expand",
        "frame_hop_ms",
        "num_heads",
        "dropout",
    ),
}
# build_downstream's arguments that the hparams files name otherwise.
DOWNSTREAM_ARGUMENTS = {"hidden": "classifier_hidden", "model_dim": "block_dim"}
# The BAS search space and how it is searched (hparams files with ``search: True``).
SEARCH_SETTINGS = (
    "search_layers",
    "candidates",
    "search_mode",
    "search_epochs",
    "search_optimizer",
    "theta_held_out",
    "theta_split",
    "theta_warmup_epochs",
)
# Hparams the recipe fills in per fold or from the data: their YAML values are placeholders
# (the upstream record holds the real width and number of representations).
FILLED_IN_HPARAMS = (
    "split_name",
    "input_dim",
    "num_upstream_layers",
    "num_classes",
)
PROTOCOL_HPARAMS = (
    "selection_set",
    "selection_metric",
    "crop_seconds",
    "eval_crop_seconds",
    "train_crop_mode",
    "sample_rate",
)


def _plain(value):
    """A JSON round trip: tuples become lists, objects their string."""
    return json.loads(json.dumps(value, default=str))


def preparation_options(prepare_function, prepare_kwargs):
    """Every option of the preparation that made the manifests, its defaults included.

    Arguments
    ---------
    prepare_function : callable
        ``prepare_<dataset>(data_folder, save_folder, ..., skip_prep)``.
    prepare_kwargs : dict
        The options the command line gave.
    """
    options = {
        name: parameter.default
        for name, parameter in inspect.signature(
            prepare_function
        ).parameters.items()
        if name not in PREPARATION_PLUMBING
        and parameter.default is not inspect.Parameter.empty
    }
    options.update(prepare_kwargs)
    return _plain(options)


def protocol_record(hparams, preparation, splits):
    """The protocol: preparation options, the splits and their manifests, selection, crops.

    Arguments
    ---------
    hparams : dict
        The run's loaded hparams.
    preparation : dict
        :func:`preparation_options`.
    splits : dict
        ``{split name: {"train": csv, "valid": csv, "test": csv}}`` of the splits run.
    """
    record = {
        key: _plain(hparams[key]) for key in PROTOCOL_HPARAMS if key in hparams
    }
    record["preparation"] = preparation
    record["splits"] = sorted(splits, key=lambda name: (len(name), name))
    record["manifests_sha256"] = {
        name: {part: file_sha256(path) for part, path in sorted(parts.items())}
        for name, parts in splits.items()
    }
    return record


def model_record(hparams):
    """``downstream_model``, the settings of that model and the classifier input.

    A BAS run (``search: True``) is recorded as the block stack it retrains, with its
    search space; the architectures each fold derived are in ``results["search"]``.
    """
    from ser_modules.downstream.factory import build_downstream

    # An hparams file without a setting builds the model with the factory's default.
    defaults = {
        DOWNSTREAM_ARGUMENTS.get(name, name): parameter.default
        for name, parameter in inspect.signature(
            build_downstream
        ).parameters.items()
    }
    name = hparams["downstream_model"]
    record = {"downstream_model": name}
    for key in MODEL_SETTINGS.get(name, ()):
        if key in hparams:
            record[key] = _plain(hparams[key])
        elif key in defaults:
            record[key] = _plain(defaults[key])
    record["search"] = bool(hparams.get("search", False))
    if record["search"]:
        record.pop("architecture", None)  # replaced by each fold's derived one
        for key in SEARCH_SETTINGS:
            if key in hparams:
                record[key] = _plain(hparams[key])
    record["layer_selection"] = _plain(hparams.get("layer_selection"))
    return record


def _read_config(source):
    with open(os.path.join(source, "config.json"), encoding="utf-8") as handle:
        return json.load(handle)


def upstream_record(upstream):
    """Kind, shape, layers used, width, source and content digest of a built upstream.

    Arguments
    ---------
    upstream : ser_modules.upstreams.Upstream
        The frozen upstream the run used (its folder must still be there: this runs
        during the run).
    """
    identity = _plain(upstream.identity())
    kind = identity.get("kind")
    record = {"kind": kind}
    source = identity.get("source")
    if source is not None:
        config = _read_config(source)
        record["model_type"] = config.get("model_type")
        record["num_hidden_layers"] = config.get("num_hidden_layers")
        record["hidden_size"] = config.get("hidden_size")
        # A Vesper export marks itself in its config.json (ser_modules.vesper.export).
        record["vesper"] = config.get("vesper")
    if kind == "opensmile":
        record["feature_set"] = identity.get("feature_set")
        record["feature_level"] = identity.get("feature_level")
    record["layers_used"] = _plain(getattr(upstream, "layers", [0]))
    record["num_representations"] = int(upstream.num_layers)
    record["width"] = int(upstream.output_dim)
    record["source"] = source
    record["content_sha256"] = json_sha256(
        {key: value for key, value in identity.items() if key != "source"}
    )
    record["identity"] = identity
    return record


def hparams_file_record(hparams_file, yaml_text):
    """Path, name and sha256 of the hparams file the run read."""
    return {
        "path": os.path.abspath(hparams_file),
        "name": os.path.basename(hparams_file),
        "sha256": text_sha256(yaml_text),
    }


def run_identity(
    dataset,
    hparams,
    hparams_file,
    yaml_text,
    overrides,
    protocol,
    model,
    upstream,
):
    """The ``identity`` entry of a ``results.json`` (see the module docstring).

    Arguments
    ---------
    dataset : str
        The dataset's name.
    hparams : dict
        The run's loaded hparams (objects are left out, paths under the output folder too).
    hparams_file : str
        The YAML file given on the command line.
    yaml_text : str
        Its text as read.
    overrides : dict
        What the recipe changed in the YAML (dataset defaults and command line).
    protocol : dict
        :func:`protocol_record`.
    model : dict
        :func:`model_record` (or the classic baseline's equivalent).
    upstream : dict
        :func:`upstream_record` (or the classic baseline's equivalent).
    """
    output_folder = hparams.get("output_folder")
    exclude = [output_folder] if output_folder else []
    return {
        "dataset": dataset,
        "protocol": protocol,
        "model": model,
        "upstream": upstream,
        "hparams_file": hparams_file_record(hparams_file, yaml_text),
        "hparams": {
            key: value
            for key, value in plain_hparams(
                hparams, exclude_prefixes=exclude
            ).items()
            if key not in FILLED_IN_HPARAMS
        },
        "overrides": _plain(
            {
                key: value
                for key, value in overrides.items()
                if key not in ("output_folder", *FILLED_IN_HPARAMS)
            }
        ),
        "seed": hparams.get("seed"),
        "code": code_version(),
    }


def recipe_identity(
    dataset,
    hparams,
    hparams_file,
    yaml_text,
    overrides,
    preparation,
    splits,
    upstream,
):
    """:func:`run_identity` of a neural recipe run (upstream -> downstream model)."""
    return run_identity(
        dataset,
        hparams,
        hparams_file,
        yaml_text,
        overrides,
        protocol_record(hparams, preparation, splits),
        model_record(hparams),
        upstream_record(upstream),
    )
