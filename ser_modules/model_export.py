"""Export a finished split as a model folder (layout: :mod:`ser_modules.model_folder`).

:func:`export_model_folder` copies the selected checkpoint's trained modules and the label
encoder, and writes ``hyperparams.yaml``: an inference YAML in HyperPyYAML syntax that
rebuilds the upstream, the trained modules (their constructor arguments read back from
the objects) and the downstream, plus SpeechBrain's ``Pretrainer`` to load them.

The Pretrainer's loadables carry no ``paths``: SpeechBrain then fetches each as
``<name>.ckpt`` from the folder given as ``source``, so the parameter files are found
wherever the folder is moved. An SSL upstream (WavLM, HuBERT, Vesper) is referenced by the
**absolute path** of its local Hugging Face folder, as the training run used it: the model
folder then works only where that folder exists. ``export_model_folder(...,
copy_upstream=True)`` copies the upstream into ``<model folder>/upstream`` and refers to it
relative to the model folder, which makes the folder self-contained (and larger: 1.2 GB
for WavLM Large). The Fbank upstream has no files.

Every tag the YAML uses must be on the allow-list of
:func:`ser_modules.model_folder.check_yaml_is_safe`, which every load checks first.
"""

import inspect
import json
import logging
import os
import re
import shutil

from ser_modules.model_folder import (
    CHECKPOINT_EXTENSION,
    HYPERPARAMS_FILE,
    INTERFACE_FILE,
    LABEL_ENCODER_FILE,
    REQUIRED_MODULES,
    TRAINED_MODULES,
    UPSTREAM_FOLDER,
)

logger = logging.getLogger(__name__)

# build_downstream argument <- recipe hparam
DOWNSTREAM_ARGUMENTS = {
    "model": "downstream_model",
    "input_dim": "input_dim",
    "num_classes": "num_classes",
    "num_layers": "num_layers",
    "architecture": "architecture",
    "hidden": "classifier_hidden",
    "model_dim": "block_dim",
    "num_heads": "num_heads",
    "ffn_dim": "ffn_dim",
    "dropout": "dropout",
    # Shiftformer and SpeechFormer options (same names in the recipes)
    **{
        name: name
        for name in (
            "shift_layers",
            "shift_mlp_ratio",
            "shift_div",
            "shift_stride",
            "shift_bidirectional",
            "spec_augment",
            "frame_hop_ms",
            "speechformer_layers",
            "speechformer_expand",
        )
    },
    "pooling": "pooling",
}

INTERFACE_SOURCE = '''"""Interface of this model folder for SpeechBrain's ``foreign_class``::

    from speechbrain.inference.interfaces import foreign_class
    classifier = foreign_class(source=MODEL_DIR, pymodule_file="custom_interface.py",
                               classname="EmotionClassifier")

The class lives in the ``ser_modules`` package (install the project); this file re-exports it.
"""

from ser_modules.inference import EmotionClassifier  # noqa: F401
'''


# Strings written unquoted in the YAML; anything else is quoted.
PLAIN_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
YAML_KEYWORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n"}


def yaml_scalar(value):
    """One value in HyperPyYAML syntax (plain values only: the YAML must stay readable)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        if PLAIN_STRING.fullmatch(value) and value.lower() not in YAML_KEYWORDS:
            return value
        return json.dumps(value)  # quoted: paths may hold ':', '#' or spaces
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(item) for item in value) + "]"
    raise TypeError(
        f"Cannot write {value!r} ({type(value).__name__}) into the inference YAML."
    )


def yaml_object(key, tag, target, arguments):
    """A ``key: !tag:target`` block with one indented line per keyword argument."""
    lines = [f"{key}: !{tag}:{target}"]
    lines += [
        f"    {name}: {yaml_scalar(value)}" for name, value in arguments.items()
    ]
    return "\n".join(lines)


def qualified_name(factory):
    """``module.Name`` of a class or function, as HyperPyYAML tags need it."""
    return f"{factory.__module__}.{factory.__qualname__}"


def constructor_arguments(module):
    """Keyword arguments that rebuild ``module``: its constructor's parameters read back
    from the attributes of the same name (parameters left at their default may be absent).

    Raises
    ------
    ValueError
        When a parameter without default cannot be read back from the object.
    """
    arguments = {}
    for name, parameter in inspect.signature(
        type(module).__init__
    ).parameters.items():
        if name == "self" or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        value = getattr(module, name, parameter.default)
        if value is parameter.empty or not isinstance(
            value, (type(None), bool, int, float, str, list, tuple)
        ):
            if parameter.default is parameter.empty:
                raise ValueError(
                    f"Cannot export {type(module).__name__}: its constructor argument {name!r} "
                    "is not stored as an attribute of the same name."
                )
            continue
        arguments[name] = value
    return arguments


def upstream_arguments(upstream_factory):
    """The class and keyword arguments of the recipe's ``upstream`` (a ``!name:`` partial).

    A ``source`` (the SSL model folder) is made absolute: a relative one would be read
    from wherever the model is later loaded.
    """
    func = getattr(upstream_factory, "func", None)
    if func is None:
        raise TypeError(
            f"hparams['upstream'] is {upstream_factory!r}: expected the recipe's '!name:' "
            "partial of an upstream class (e.g. ser_modules.upstreams.FbankUpstream)."
        )
    signature = inspect.signature(func)
    bound = signature.bind_partial(
        *upstream_factory.args, **upstream_factory.keywords
    )
    arguments = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind == inspect.Parameter.VAR_KEYWORD:
            arguments.update(
                value
            )  # e.g. build_upstream(kind, ..., **kwargs): keep them flat
        else:
            arguments[name] = value
    if arguments.get("source") is not None:
        arguments["source"] = os.path.abspath(str(arguments["source"]))
    return func, arguments


def inference_yaml(
    hparams, modules, upstream_class, upstream_kwargs, copied_upstream, origin
):
    """The text of ``hyperparams.yaml`` of a model folder (see the module docstring
    and the layout in :mod:`ser_modules.model_folder`)."""
    window_seconds = hparams.get("crop_seconds")
    sections = [
        "# " + "#" * 76,
        "# Speech emotion classifier exported by ser_modules.model_export.export_model_folder",
        f"# from {origin}.",
        "# Load it with",
        "#   EmotionClassifier.from_hparams(source=MODEL_DIR, savedir=MODEL_DIR)",
        "# or classify files with: python -m ser_modules.infer MODEL_DIR AUDIO...",
        "# " + "#" * 76,
        "",
        "# Audio: any rate / channel count is resampled and mixed to mono. Recordings longer",
        "# than the training crop are classified window by window (null: the whole file).",
        f"sample_rate: {yaml_scalar(int(hparams.get('sample_rate', 16000)))}",
        f"window_seconds: {yaml_scalar(window_seconds)}",
        "hop_seconds: !ref <window_seconds>",
        "",
    ]
    target = qualified_name(upstream_class)
    if copied_upstream:
        kwargs = {
            name: value
            for name, value in upstream_kwargs.items()
            if name != "source"
        }
        sections += [
            "# The frozen upstream, copied into this folder: EmotionClassifier builds it from",
            "# <model folder>/<upstream_folder>, so the folder can be moved.",
            f"upstream_folder: {yaml_scalar(UPSTREAM_FOLDER)}",
            yaml_object("upstream", "name", target, kwargs),
        ]
    else:
        if upstream_kwargs.get("source") is not None:
            sections += [
                "# The frozen upstream, read from its local Hugging Face folder by ABSOLUTE path:",
                "# the model works where that folder exists (export with copy_upstream=True for",
                "# a self-contained folder, or edit source).",
            ]
        else:
            sections.append("# The frozen upstream (no files).")
        # A class is built with !new:, a factory function (build_upstream) with !apply:.
        tag = "new" if inspect.isclass(upstream_class) else "apply"
        sections.append(yaml_object("upstream", tag, target, upstream_kwargs))
    sections.append("")
    sections.append(
        "# Trained modules; their parameters are <name>.ckpt in this folder."
    )
    for name, module in modules.items():
        sections.append(
            yaml_object(
                name,
                "new",
                qualified_name(type(module)),
                constructor_arguments(module),
            )
        )
    downstream = {
        argument: hparams[key]
        for argument, key in DOWNSTREAM_ARGUMENTS.items()
        if key in hparams
    }
    downstream["input_dim"], downstream["num_classes"] = (
        int(hparams["input_dim"]),
        int(hparams["num_classes"]),
    )
    sections.append(
        yaml_object(
            "downstream",
            "apply",
            "ser_modules.downstream.factory.build_downstream",
            downstream,
        )
    )
    sections += [
        "",
        "# Class names: EmotionClassifier loads <model folder>/<label_encoder_file>.",
        "label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder",
        f"label_encoder_file: {yaml_scalar(LABEL_ENCODER_FILE)}",
        "",
        "modules:",
    ]
    if not copied_upstream:
        sections.append("    upstream: !ref <upstream>")
    sections += [
        f"    {name}: !ref <{name}>" for name in [*modules, "downstream"]
    ]
    sections += [
        "",
        "# No paths: SpeechBrain fetches each loadable as <name>.ckpt from the folder given as",
        "# source to from_hparams, so the files are found wherever this folder lives.",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
    ]
    sections += [
        f"        {name}: !ref <{name}>" for name in [*modules, "downstream"]
    ]
    return "\n".join(sections) + "\n"


def export_model_folder(
    hparams, checkpoint, label_encoder_path, target_dir, copy_upstream=False
):
    """Turn a finished split into a model folder (layout: :mod:`ser_modules.model_folder`).

    Arguments
    ---------
    hparams : dict
        The split's loaded recipe hparams (``upstream``, ``modules``, ``crop_seconds``,
        ``sample_rate`` and the downstream keys ``downstream_model``, ``input_dim``, ...).
    checkpoint : speechbrain.utils.checkpoints.Checkpoint or str
        The selected checkpoint (``checkpointer.find_checkpoint(max_key=...)``) or its folder.
    label_encoder_path : str
        The training label encoder, ``<output_folder>/label_encoder.txt``.
    target_dir : str
        The model folder to write (replaced when it exists).
    copy_upstream : bool
        Copy the SSL upstream's Hugging Face folder into ``<target_dir>/upstream`` so the
        model folder does not depend on the upstream's absolute path.

    Returns
    -------
    str
        ``target_dir``.
    """
    checkpoint_folder = str(getattr(checkpoint, "path", checkpoint))
    trained = hparams.get("modules", {})
    modules = {
        name: trained[name] for name in TRAINED_MODULES if name in trained
    }
    missing = [name for name in REQUIRED_MODULES if name not in modules]
    if missing:
        raise ValueError(f"Cannot export: hparams['modules'] lacks {missing}.")
    files = {}
    for name in modules:
        path = os.path.join(checkpoint_folder, name + CHECKPOINT_EXTENSION)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"The checkpoint {checkpoint_folder} has no {name}{CHECKPOINT_EXTENSION}: export "
                "a complete checkpoint of this split (the one find_checkpoint selects)."
            )
        files[name + CHECKPOINT_EXTENSION] = path
    if not os.path.isfile(label_encoder_path):
        raise FileNotFoundError(
            f"The label encoder {label_encoder_path} does not exist: it is written by the recipe "
            "as <output_folder>/label_encoder.txt."
        )
    upstream_class, upstream_kwargs = upstream_arguments(hparams["upstream"])
    source = upstream_kwargs.get("source")
    if copy_upstream and source is None:
        copy_upstream = False  # nothing to copy (Fbank)

    meta = getattr(checkpoint, "meta", None) or {}
    origin = checkpoint_folder + (
        f" (epoch {int(meta['epoch'])})" if "epoch" in meta else ""
    )
    downstream_modules = {
        name: module for name, module in modules.items() if name != "downstream"
    }
    text = inference_yaml(
        hparams,
        downstream_modules,
        upstream_class,
        upstream_kwargs,
        copy_upstream,
        origin,
    )

    target_dir = os.path.abspath(target_dir)
    staging = target_dir + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for name, path in files.items():
        shutil.copyfile(path, os.path.join(staging, name))
    shutil.copyfile(
        label_encoder_path, os.path.join(staging, LABEL_ENCODER_FILE)
    )
    with open(
        os.path.join(staging, INTERFACE_FILE), "w", encoding="utf-8"
    ) as handle:
        handle.write(INTERFACE_SOURCE)
    if copy_upstream:
        shutil.copytree(source, os.path.join(staging, UPSTREAM_FOLDER))
    with open(
        os.path.join(staging, HYPERPARAMS_FILE), "w", encoding="utf-8"
    ) as handle:
        handle.write(text)  # last: a folder with hyperparams.yaml is complete
    if os.path.isdir(target_dir):
        shutil.rmtree(target_dir)
    os.replace(staging, target_dir)
    logger.info("Exported the model of %s to %s", checkpoint_folder, target_dir)
    return target_dir
