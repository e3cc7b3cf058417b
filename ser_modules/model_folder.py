"""What a model folder is, and whether one may be loaded.

A *model folder* follows SpeechBrain's pretrained-model layout, so it loads with
``from_hparams`` like the models of the SpeechBrain hub::

    <model folder>/
        hyperparams.yaml      # inference YAML: upstream, layer combiner, [input norm],
                              # downstream, label encoder, windowing, a Pretrainer
        layer_combiner.ckpt   # trained parameters, copied from the selected checkpoint
        input_norm.ckpt       # (Fbank recipes only) frozen global frame statistics
        downstream.ckpt
        label_encoder.txt     # the training label encoder (speechbrain CategoricalEncoder)
        custom_interface.py   # for speechbrain.inference.interfaces.foreign_class
        upstream/             # only with copy_upstream=True: the Hugging Face SSL folder

:mod:`ser_modules.model_export` writes one from a finished split;
:class:`ser_modules.inference.EmotionClassifier` loads one. This module holds the layout
(file names) and the checks every load runs first, so that a folder from elsewhere can
never run code: :func:`check_model_folder` refuses YAML tags outside an allow-list
(:func:`check_yaml_is_safe`), parameter files that are not plain tensors
(:func:`load_plain_checkpoint`) or hold NaN, missing files and truncated upstream
weights (:func:`check_safetensors_file`), each error naming the file and what to do.
"""

import importlib
import inspect
import json
import os

import torch
import yaml

HYPERPARAMS_FILE = "hyperparams.yaml"
LABEL_ENCODER_FILE = "label_encoder.txt"
INTERFACE_FILE = "custom_interface.py"
UPSTREAM_FOLDER = "upstream"
CHECKPOINT_EXTENSION = ".ckpt"  # SpeechBrain's name for one recoverable's file
# Trained modules an emotion recipe checkpoints, in the order they run.
TRAINED_MODULES = ("layer_combiner", "input_norm", "downstream")
REQUIRED_MODULES = ("layer_combiner", "downstream")


class ModelFolderError(FileNotFoundError):
    """A model folder that cannot be loaded: missing, lacking a file, or not trusted."""


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads HyperPyYAML as plain YAML (tags ignored) to list the files it needs."""


def _construct_untagged(loader, suffix, node):
    del suffix
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TagTolerantLoader.add_multi_constructor("!", _construct_untagged)


# What a model folder's YAML may build. HyperPyYAML imports and calls whatever its tags
# name (``!apply:os.system`` runs a command), so every tag is checked against this list
# before HyperPyYAML sees the file. Classes of these packages are built with ``!new:`` (or
# ``!name:``, a copied upstream); nothing else may be called.
ALLOWED_CLASS_PREFIXES = ("ser_modules.upstreams.", "ser_modules.downstream.")
ALLOWED_CLASSES = (
    "speechbrain.dataio.encoder.CategoricalEncoder",
    "speechbrain.utils.parameter_transfer.Pretrainer",
)
ALLOWED_CALLS = (
    "ser_modules.downstream.factory.build_downstream",
    "ser_modules.upstreams.build_upstream",
)
PLAIN_TAGS = ("!ref", "!copy", "!tuple")
STANDARD_TAG = "tag:yaml.org,2002:"
STANDARD_TYPES = {
    "str",
    "int",
    "float",
    "bool",
    "null",
    "map",
    "seq",
    "binary",
    "timestamp",
    "merge",
    "value",
}


def _allowed_target(kind, target):
    """Whether ``!kind:target`` is on the allow-list (see :data:`ALLOWED_CLASS_PREFIXES`)."""
    if kind == "apply":
        return target in ALLOWED_CALLS
    if kind not in ("new", "name"):
        return False
    if target in ALLOWED_CLASSES:
        return True
    if not target.startswith(ALLOWED_CLASS_PREFIXES):
        return False
    module_name, _, attribute = target.rpartition(".")
    try:  # only the project's own modules are imported here
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    return inspect.isclass(value) and issubclass(value, torch.nn.Module)


def check_yaml_is_safe(hparams_path):
    """Refuse a model folder's YAML that names anything outside the allow-list.

    The YAML is only composed (parsed into nodes), never constructed: nothing it names is
    imported or called.

    Raises
    ------
    ModelFolderError
        Naming the file, the line and the refused tag.
    """
    with open(hparams_path, encoding="utf-8") as handle:
        try:
            root = yaml.compose(handle, Loader=yaml.SafeLoader)
        except yaml.YAMLError as error:
            raise ModelFolderError(
                f"{hparams_path} is not valid YAML ({error}): re-export the model."
            ) from error
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        tag = node.tag or ""
        if tag.startswith(STANDARD_TAG):
            allowed = tag[len(STANDARD_TAG) :] in STANDARD_TYPES
        elif tag.startswith("!") and ":" in tag:
            kind, _, target = tag[1:].partition(":")
            allowed = _allowed_target(kind, target)
        else:
            allowed = tag in PLAIN_TAGS
        if not allowed:
            raise ModelFolderError(
                f"Refusing to load {hparams_path}: line {node.start_mark.line + 1} uses the tag {tag!r}, "
                "which is not on the allow-list of model folders (ser_modules upstream and downstream "
                "classes, build_downstream, SpeechBrain's CategoricalEncoder and Pretrainer). A model "
                "folder must not run code; re-export the model with ser_modules.model_export.export_model_folder."
            )
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def load_plain_checkpoint(path):
    """``torch.load(path, weights_only=True)``: tensors and plain values only.

    Raises
    ------
    ModelFolderError
        When the file holds anything else (a pickled object could run code) or is damaged.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, truncated files, ...
        raise ModelFolderError(
            f"Refusing to load {path}: it is not a plain parameter file (tensors and plain values "
            f"only; {type(error).__name__}: {error}). Re-export the model folder."
        ) from error


def check_safetensors_file(path):
    """Check a ``.safetensors`` file against its own header (a truncated copy is named).

    Raises
    ------
    ModelFolderError
        When the header is unreadable or the file size differs from what it describes.
    """
    size = os.path.getsize(path)
    remedy = "the file is truncated or damaged: copy or download it again."
    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_size > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_size))
        ends = [
            entry["data_offsets"][1]
            for name, entry in header.items()
            if name != "__metadata__"
        ]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ModelFolderError(
            f"{path} is not a readable safetensors file ({error}): {remedy}"
        ) from error
    expected = 8 + header_size + max(ends, default=0)
    if expected != size:
        raise ModelFolderError(
            f"{path} holds {size} bytes but its header describes {expected}: {remedy}"
        )


def check_upstream_files(folder):
    """Check the ``*.safetensors`` weights of a Hugging Face upstream folder (if any)."""
    if folder and os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".safetensors"):
                check_safetensors_file(os.path.join(folder, name))


def check_model_folder(folder, hparams_file=HYPERPARAMS_FILE):
    """Check that a model folder holds every file its hyperparams need, before loading.

    Also refuses, before anything is built or loaded: YAML tags outside the allow-list
    (:func:`check_yaml_is_safe`), parameter files that are not plain tensors
    (:func:`load_plain_checkpoint`) or hold NaN, and truncated upstream weights.

    Returns
    -------
    dict
        The YAML read as plain data (tags dropped).

    Raises
    ------
    ModelFolderError
        Naming the missing folder or file and what to do about it.
    """
    folder = str(folder)
    how_to_get_one = (
        "A trained recipe writes one per split to <output_folder>/<split>/model; "
        "ser_modules.model_export.export_model_folder writes one from any checkpoint."
    )
    if not os.path.isdir(folder):
        raise ModelFolderError(
            f"The model folder {folder} does not exist. {how_to_get_one}"
        )
    hparams_path = os.path.join(folder, hparams_file)
    if not os.path.isfile(hparams_path):
        raise ModelFolderError(
            f"{folder} is not a model folder: it has no {hparams_file}. {how_to_get_one}"
        )
    check_yaml_is_safe(hparams_path)
    with open(hparams_path, encoding="utf-8") as handle:
        try:
            description = yaml.load(handle, Loader=_TagTolerantLoader) or {}
        except yaml.YAMLError as error:
            raise ModelFolderError(
                f"{hparams_path} is not valid YAML ({error}): re-export the model."
            ) from error
    loadables = (description.get("pretrainer") or {}).get("loadables") or {}
    needed = [name + CHECKPOINT_EXTENSION for name in loadables]
    needed.append(description.get("label_encoder_file", LABEL_ENCODER_FILE))
    missing = [
        name
        for name in needed
        if not os.path.isfile(os.path.join(folder, name))
    ]
    if missing:
        raise ModelFolderError(
            f"The model folder {folder} lacks {', '.join(missing)} (listed in {hparams_file}). "
            f"Copy the whole folder again, or re-export it. {how_to_get_one}"
        )
    if "upstream_folder" in description:
        upstream_source = os.path.join(folder, description["upstream_folder"])
        remedy = "copy the whole model folder again, or re-export it with copy_upstream=True."
    else:
        upstream_source = (description.get("upstream") or {}).get("source")
        remedy = (
            f"put the upstream back there, edit 'source:' in {hparams_path}, or re-export the model "
            "with copy_upstream=True (a self-contained folder)."
        )
    if upstream_source is not None and not os.path.isfile(
        os.path.join(upstream_source, "config.json")
    ):
        raise ModelFolderError(
            f"The upstream model folder {upstream_source} used by {folder} is missing (no "
            f"config.json there): {remedy}"
        )
    check_upstream_files(upstream_source)
    for name in loadables:  # plain data only, before SpeechBrain loads them
        for value in _tensors(
            load_plain_checkpoint(
                os.path.join(folder, name + CHECKPOINT_EXTENSION)
            )
        ):
            if not bool(torch.isfinite(value).all()):
                raise ModelFolderError(
                    f"{os.path.join(folder, name + CHECKPOINT_EXTENSION)} holds NaN or infinite values: "
                    "the model was trained on broken inputs; retrain it."
                )
    return description


def _tensors(value):
    """Every floating-point tensor inside a loaded checkpoint (dicts / lists / tensors)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []
