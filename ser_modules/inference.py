"""Inference with a trained emotion model: export a finished split as a model folder, then
classify audio files of any length, sample rate and channel count.

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

The Pretrainer's loadables carry no ``paths``: SpeechBrain then fetches each as
``<name>.ckpt`` from the folder given as ``source``, so the parameter files are found
wherever the folder is moved. An SSL upstream (WavLM, HuBERT, Vesper) is referenced by the
**absolute path** of its local Hugging Face folder, as the training run used it: the model
folder then works only where that folder exists. ``export_model_folder(...,
copy_upstream=True)`` copies the upstream into ``<model folder>/upstream`` and refers to it
relative to the model folder, which makes the folder self-contained (and larger: 1.2 GB
for WavLM Large). The Fbank upstream has no files.

Loading::

    from ser_modules.inference import EmotionClassifier
    classifier = EmotionClassifier.from_hparams(source=MODEL_DIR, savedir=MODEL_DIR)
    result = classifier.classify_file("speech.wav")   # result["label"], result["windows"]

    # or, with nothing but SpeechBrain imported (ser_modules must be installed):
    from speechbrain.inference.interfaces import foreign_class
    classifier = foreign_class(source=MODEL_DIR, pymodule_file="custom_interface.py",
                               classname="EmotionClassifier")

A recording longer than the training crop is cut into windows of that length (the hop is
configurable); each window is classified and the file's prediction is the mean of the
window probabilities. ``python -m ser_modules.infer`` is the command-line front end.
"""

import csv
import inspect
import json
import logging
import os
import re
import shutil

import torch
import yaml
from speechbrain.inference.interfaces import Pretrained

from ser_modules.audio import (
    AudioError,
    crop_or_pad,
    load_audio,
    seconds_to_samples,
)
from ser_modules.feature_cache import minimum_samples

logger = logging.getLogger(__name__)

HYPERPARAMS_FILE = "hyperparams.yaml"
LABEL_ENCODER_FILE = "label_encoder.txt"
INTERFACE_FILE = "custom_interface.py"
UPSTREAM_FOLDER = "upstream"
CHECKPOINT_EXTENSION = ".ckpt"  # SpeechBrain's name for one recoverable's file
# Trained modules an emotion recipe checkpoints, in the order they run.
TRAINED_MODULES = ("layer_combiner", "input_norm", "downstream")
REQUIRED_MODULES = ("layer_combiner", "downstream")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
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


class ModelFolderError(FileNotFoundError):
    """A model folder that cannot be loaded: missing, lacking a file, or not trusted."""


class NonFiniteOutputError(ValueError):
    """The model gave NaN or infinite outputs for a file: reported as a failed file."""


# --------------------------------------------------------------------------- export


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
    """The text of ``hyperparams.yaml`` of a model folder (see the module docstring)."""
    window_seconds = hparams.get("crop_seconds")
    sections = [
        "# " + "#" * 76,
        "# Speech emotion classifier exported by ser_modules.inference.export_model_folder",
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
    """Turn a finished split into a model folder (see the module docstring).

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


# --------------------------------------------------------------------------- loading


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
    import importlib

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
                "folder must not run code; re-export the model with ser_modules.inference.export_model_folder."
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
        "ser_modules.inference.export_model_folder writes one from any checkpoint."
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


def window_bounds(num_samples, window, hop):
    """Sample ranges of the windows a recording of ``num_samples`` is classified in.

    Windows of ``window`` samples start every ``hop`` samples; when they do not reach the
    end, one more window ends exactly at the end, so every sample is covered by a full
    window. A recording no longer than a window (or ``window=None``) is one window.

    Returns
    -------
    list of (int, int)
        ``(start, end)`` of each window.
    """
    if window is None or num_samples <= window:
        return [(0, num_samples)]
    if hop is None or hop <= 0:
        raise ValueError(f"The hop must be positive, got {hop} samples.")
    starts = list(range(0, num_samples - window + 1, hop))
    if starts[-1] + window < num_samples:
        starts.append(num_samples - window)
    return [(start, start + window) for start in starts]


class EmotionClassifier(Pretrained):
    """A trained emotion model: frozen upstream -> layer combiner -> [input norm] -> downstream.

    Build it from a model folder with :meth:`from_hparams` (see the module docstring).

    Example
    -------
    >>> classifier = EmotionClassifier.from_hparams(source="model", savedir="model")  # doctest: +SKIP
    >>> classifier.classify_file("speech.wav")["label"]  # doctest: +SKIP
    'angry'
    """

    HPARAMS_NEEDED = [
        "sample_rate",
        "window_seconds",
        "hop_seconds",
        "label_encoder",
        "pretrainer",
    ]
    MODULES_NEEDED = ["layer_combiner", "downstream"]

    def __init__(
        self, modules=None, hparams=None, run_opts=None, freeze_params=True
    ):
        modules, hparams = dict(modules or {}), dict(hparams or {})
        folder = self.model_folder_of(hparams)
        if (
            "upstream" not in modules
        ):  # copied upstream: a partial waiting for its folder
            upstream = hparams["upstream"](
                source=os.path.join(folder, hparams["upstream_folder"])
            )
            hparams["upstream"] = modules["upstream"] = upstream
        encoder_path = os.path.join(
            folder, hparams.get("label_encoder_file", LABEL_ENCODER_FILE)
        )
        if not os.path.isfile(encoder_path):
            raise ModelFolderError(
                f"The model folder {folder} lacks {os.path.basename(encoder_path)}: re-export it."
            )
        hparams["label_encoder"].load(encoder_path)
        self._load_strictly(folder, hparams["pretrainer"].loadables)
        super().__init__(
            modules=modules,
            hparams=hparams,
            run_opts=run_opts,
            freeze_params=freeze_params,
        )
        self.model_folder = folder
        self.labels = [
            self.hparams.label_encoder.ind2lab[index]
            for index in range(len(self.hparams.label_encoder))
        ]
        self.min_samples = minimum_samples(self.mods.upstream)

    @staticmethod
    def _load_strictly(folder, loadables):
        """Load every parameter file again, strictly (SpeechBrain's transfer only warns).

        Raises
        ------
        ModelFolderError
            Naming the file and the missing, unexpected or mis-shaped parameters.
        """
        for name, module in loadables.items():
            path = os.path.join(folder, name + CHECKPOINT_EXTENSION)
            state = load_plain_checkpoint(path)
            try:
                if hasattr(
                    module, "_load_statistics_dict"
                ):  # global normalisation statistics
                    missing = {"count", "glob_mean", "glob_std"} - set(state)
                    if missing:
                        raise RuntimeError(
                            f"missing statistics {sorted(missing)}"
                        )
                    module._load_statistics_dict(state)
                else:
                    module.load_state_dict(state, strict=True)
            except (RuntimeError, TypeError, AttributeError) as error:
                raise ModelFolderError(
                    f"{path} does not fit the {name} described in the model folder's YAML ({error}). "
                    "The parameter file belongs to another model: re-export the model folder."
                ) from error

    @staticmethod
    def model_folder_of(hparams):
        """The folder the parameter files were fetched from (through savedir symlinks)."""
        paths = hparams["pretrainer"].paths
        return os.path.dirname(os.path.realpath(str(paths["downstream"])))

    @classmethod
    def from_hparams(cls, source, hparams_file=HYPERPARAMS_FILE, **kwargs):
        """Load a local model folder; missing files are reported before anything is built.

        Arguments
        ---------
        source : str
            The model folder (nothing is downloaded).
        hparams_file : str
            Its inference YAML.
        **kwargs
            Passed to ``Pretrained.from_hparams`` (``savedir``, ``run_opts={"device": ...}``,
            ``overrides`` ...).
        """
        description = check_model_folder(source, hparams_file)
        classifier = super().from_hparams(
            source=str(source), hparams_file=hparams_file, **kwargs
        )
        declared = (description.get("downstream") or {}).get("num_classes")
        if declared is not None and int(declared) != len(classifier.labels):
            raise ModelFolderError(
                f"The model in {source} has {declared} outputs but its label encoder lists "
                f"{len(classifier.labels)} labels ({classifier.labels}): the files do not belong together; "
                "re-export the model folder."
            )
        return classifier

    def forward(self, wavs, wav_lens=None):
        """Logits ``(B, C)`` of a padded batch of waveforms ``(B, T)`` at ``sample_rate``."""
        feats, feat_lens = self.mods.upstream(wavs, wav_lens)  # (B, nL, T', D)
        frames = self.mods.layer_combiner(feats.float())  # (B, T', D)
        if "input_norm" in self.mods:
            frames = self.mods.input_norm(
                frames, feat_lens
            )  # frozen statistics (eval mode)
        return self.mods.downstream(frames, feat_lens)  # (B, C)

    def classify_batch(self, wavs, wav_lens=None):
        """Classify a padded batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, T)`` mono waveforms at ``sample_rate``, right-padded.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths (1.0 = ``T``); ``None``: no padding.

        Returns
        -------
        probabilities : torch.Tensor
            ``(B, C)`` class probabilities (on the CPU).
        indices : torch.Tensor
            ``(B,)`` most probable class indices.
        labels : list of str
            Their class names.
        """
        wavs = wavs.to(self.device, torch.float32)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        wav_lens = wav_lens.to(self.device)
        with torch.no_grad(), self.inference_ctx:
            logits = self.forward(wavs, wav_lens)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteOutputError(
                "the model gave NaN or infinite outputs (out-of-range audio, or a broken model folder)"
            )
        probabilities = torch.softmax(logits.float(), dim=-1).cpu()  # (B, C)
        indices = probabilities.argmax(dim=-1)
        return (
            probabilities,
            indices,
            [self.labels[index] for index in indices.tolist()],
        )

    def classify_waveform(
        self, waveform, window_seconds=None, hop_seconds=None, batch_size=8
    ):
        """Classify one recording window by window.

        Arguments
        ---------
        waveform : torch.Tensor
            ``(T,)`` mono waveform at ``sample_rate``.
        window_seconds : float, optional
            Window length (default: the training crop, ``window_seconds`` of the YAML;
            ``<= 0``: the whole recording at once).
        hop_seconds : float, optional
            Step between window starts (default: ``hop_seconds`` of the YAML, or the window
            length when ``window_seconds`` is given).
        batch_size : int
            Windows per forward pass.

        Returns
        -------
        dict
            ``label``, ``index``, ``probabilities`` ``{label: p}`` (mean over windows) and
            ``windows``: per window ``start_seconds``, ``end_seconds``, ``label``, ``index``,
            ``probabilities``.
        """
        rate = int(self.hparams.sample_rate)
        if window_seconds is None:
            window_seconds = self.hparams.window_seconds
            hop_seconds = (
                self.hparams.hop_seconds if hop_seconds is None else hop_seconds
            )
        hop_seconds = (
            hop_seconds or window_seconds
        )  # a window given alone: back to back
        window = seconds_to_samples(window_seconds, rate)
        hop = seconds_to_samples(hop_seconds, rate)
        bounds = window_bounds(int(waveform.shape[0]), window, hop)
        probabilities = []
        for first in range(0, len(bounds), batch_size):
            segments = [
                crop_or_pad(
                    waveform[start:end], None, min_samples=self.min_samples
                )
                for start, end in bounds[first : first + batch_size]
            ]
            lengths = torch.tensor(
                [segment.shape[0] for segment in segments], dtype=torch.float32
            )
            wavs = torch.nn.utils.rnn.pad_sequence(
                segments, batch_first=True
            )  # (B, T)
            probabilities.append(
                self.classify_batch(wavs, lengths / lengths.max())[0]
            )
        probabilities = torch.cat(probabilities)  # (num_windows, C)
        overall = probabilities.mean(dim=0)  # (C,)
        windows = [
            {
                "start_seconds": start / rate,
                "end_seconds": end / rate,
                **self._prediction(window_probabilities),
            }
            for (start, end), window_probabilities in zip(bounds, probabilities)
        ]
        return {**self._prediction(overall), "windows": windows}

    def classify_file(
        self, path, window_seconds=None, hop_seconds=None, batch_size=8
    ):
        """Classify an audio file of any rate and channel count (see :meth:`classify_waveform`).

        Raises
        ------
        ser_modules.audio.AudioError
            Unreadable, empty, non-finite or out-of-range audio (the message names the file).
        NonFiniteOutputError
            The model gave NaN or infinite outputs for it (never turned into a label).
        """
        waveform = load_audio(
            path, int(self.hparams.sample_rate)
        )  # (T,), mono, resampled
        try:
            result = self.classify_waveform(
                waveform, window_seconds, hop_seconds, batch_size
            )
        except NonFiniteOutputError as error:
            raise NonFiniteOutputError(
                f"Cannot classify {path}: {error}."
            ) from error
        return {
            "file": str(path),
            "duration_seconds": waveform.shape[0]
            / int(self.hparams.sample_rate),
            **result,
        }

    def _prediction(self, probabilities):
        """``label``, ``index`` and ``{label: probability}`` of a ``(C,)`` distribution."""
        index = int(probabilities.argmax())
        return {
            "label": self.labels[index],
            "index": index,
            "probabilities": {
                label: float(p)
                for label, p in zip(self.labels, probabilities.tolist())
            },
        }


# --------------------------------------------------------------------------- many files


def read_path_list(list_path):
    """Audio paths listed in a ``.txt`` (one per line, ``#`` comments) or ``.csv`` file.

    A CSV's paths are read from its ``path``, ``wav``, ``file`` or ``audio`` column (else
    the first column). Relative paths are taken relative to the list's folder.
    """
    try:
        return _read_path_list(list_path)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"The path list {list_path} is not UTF-8 text ({error}): save it as UTF-8."
        ) from error


def _read_path_list(list_path):
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first path.
    with open(list_path, encoding="utf-8-sig", newline="") as handle:
        if list_path.lower().endswith(".csv"):
            rows = list(csv.reader(handle))
            if not rows:
                return []
            header = [name.strip().lower() for name in rows[0]]
            named = [
                header.index(name)
                for name in ("path", "wav", "file", "audio")
                if name in header
            ]
            column = named[0] if named else 0
            body = rows[1:] if named else rows
            paths = [
                row[column].strip()
                for row in body
                if len(row) > column and row[column].strip()
            ]
        else:
            paths = [
                line.strip()
                for line in handle
                if line.strip() and not line.lstrip().startswith("#")
            ]
    base = os.path.dirname(os.path.abspath(list_path))
    return [
        path if os.path.isabs(path) else os.path.join(base, path)
        for path in paths
    ]


def collect_audio_files(inputs):
    """Expand files, folders (recursively: wav/flac/mp3/ogg) and path lists into files.

    A path that does not exist is kept: classifying it reports it as unreadable.

    Raises
    ------
    FileNotFoundError
        When nothing at all was found.
    """
    files = []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if name.lower().endswith(AUDIO_EXTENSIONS)
            )
            if not found:
                logger.warning(
                    "No audio files (%s) under %s",
                    ", ".join(AUDIO_EXTENSIONS),
                    item,
                )
            files.extend(found)
        elif item.lower().endswith((".txt", ".csv")) and os.path.isfile(item):
            files.extend(read_path_list(item))
        else:
            files.append(item)
    if not files:
        raise FileNotFoundError(
            f"No audio files found in {list(inputs)}: give files, folders holding "
            f"{'/'.join(AUDIO_EXTENSIONS)} files, or .txt/.csv lists of paths."
        )
    return files


def classify_files(
    classifier, paths, window_seconds=None, hop_seconds=None, batch_size=8
):
    """Classify many files; an unusable file is reported and skipped, not fatal.

    Returns
    -------
    results : list of dict
        :meth:`EmotionClassifier.classify_file` of each readable file.
    failures : list of dict
        ``{"file", "error"}`` of each file that could not be read or gave non-finite outputs.
    """
    results, failures = [], []
    for path in paths:
        try:
            results.append(
                classifier.classify_file(
                    path, window_seconds, hop_seconds, batch_size
                )
            )
        except (AudioError, NonFiniteOutputError) as error:
            logger.warning("Skipped: %s", error)
            failures.append({"file": str(path), "error": str(error)})
    return results, failures
