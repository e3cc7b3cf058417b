"""Every hparams file: each top-level key is used, and the file loads.

SpeechBrain's consistency rule: a top-level key must be referenced by another key
(``!ref <key>``) or read by the Python code (``hparams["key"]``, ``hparams.key``,
``hparams.get("key")``, ``"key" in hparams``, ``setup["key"]``), or be a run option that
``sb.Brain`` reads from the hparams (``ckpt_interval_steps`` ...). A key nobody reads is
a setting that silently does nothing.
"""

import ast
import glob
import os
import re

import pytest
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_helpers import REPO_ROOT

from ser_modules.upstreams.tiny import save_tiny_model

HPARAMS_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "hparams", "*.yaml")))
CODE_FOLDERS = ("ser_modules", "recipes")
# Names the code uses for the loaded hparams.
HPARAMS_NAMES = {"hparams", "setup"}
# Brain reads these from the hparams when the command line does not set them.
RUN_OPTIONS = set(sb.core.RunOptions().as_dict())
TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w]*)\s*:", re.MULTILINE)
REFERENCE = re.compile(r"<([A-Za-z_]\w*)")


def _is_hparams(node):
    """``hparams``, ``setup`` or ``<anything>.hparams``."""
    if isinstance(node, ast.Name):
        return node.id in HPARAMS_NAMES
    return isinstance(node, ast.Attribute) and node.attr == "hparams"


def keys_read_by_code():
    """Every hparams key the Python code of the project reads, found in its syntax tree."""
    used = set()
    for folder in CODE_FOLDERS:
        for path in glob.glob(
            os.path.join(REPO_ROOT, folder, "**", "*.py"), recursive=True
        ):
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), filename=path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Subscript) and _is_hparams(node.value):
                    key = node.slice
                    if isinstance(key, ast.Constant) and isinstance(
                        key.value, str
                    ):
                        used.add(key.value)
                elif isinstance(node, ast.Attribute) and _is_hparams(
                    node.value
                ):
                    used.add(node.attr)
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get"
                    and _is_hparams(node.func.value)
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    used.add(node.args[0].value)
                elif (
                    isinstance(node, ast.Compare)
                    and isinstance(node.left, ast.Constant)
                    and isinstance(node.ops[0], (ast.In, ast.NotIn))
                    and _is_hparams(node.comparators[0])
                ):
                    used.add(node.left.value)
    return used


CODE_KEYS = keys_read_by_code()


def unused_keys(yaml_text):
    """Top-level keys of a YAML text that no key references and the code does not read."""
    keys = TOP_LEVEL_KEY.findall(yaml_text)
    unused = []
    for key in keys:
        if key.startswith("__") or key in CODE_KEYS or key in RUN_OPTIONS:
            continue  # "__name" keys are executed when the file loads (__set_seed)
        definition = re.compile(rf"^{re.escape(key)}\s*:", re.MULTILINE)
        others = definition.sub("", yaml_text)
        if key not in REFERENCE.findall(others):
            unused.append(key)
    return unused


def test_the_scanner_finds_code_keys_and_run_options():
    # The scanner must see the access forms the code uses, or the check below is empty.
    assert {
        "crop_seconds",
        "theta_dataloader_opts",
        "search",
        "block_search",
        "fold",
    } <= CODE_KEYS
    assert {"ckpt_interval_steps", "precision"} <= RUN_OPTIONS


def test_an_added_unused_key_is_reported():
    with open(
        os.path.join(REPO_ROOT, "hparams", "superb_fbank.yaml"),
        encoding="utf-8",
    ) as handle:
        text = handle.read()
    assert unused_keys(text) == []
    assert unused_keys(text + "\nforgotten_setting: 3  # read by nobody\n") == [
        "forgotten_setting"
    ]
    referenced = (
        text + "\nforgotten_setting: 3\nuser: !ref <forgotten_setting>\n"
    )
    assert unused_keys(referenced) == ["user"]


@pytest.mark.parametrize("path", HPARAMS_FILES, ids=os.path.basename)
def test_every_top_level_key_is_used(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert unused_keys(text) == [], (
        f"{os.path.basename(path)} has keys that no key references and no code reads: remove "
        "them, or read them where they take effect."
    )


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    # 12 layers: enough for the Vesper-12 student drawn from the teacher's layers.
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny_wavlm"), kind="wavlm", num_layers=12
    )


@pytest.mark.parametrize("path", HPARAMS_FILES, ids=os.path.basename)
def test_file_loads_with_its_placeholders_filled(path, tmp_path, tiny_wavlm):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    placeholders = re.findall(r"^(\w+):\s*!PLACEHOLDER", text, re.MULTILINE)
    values = {
        "data_folder": str(tmp_path / "corpus"),
        "ssl_source": tiny_wavlm,
        "teacher_source": tiny_wavlm,
    }
    unknown = set(placeholders) - set(values)
    assert not unknown, (
        f"New placeholders {unknown}: give them a value in this test."
    )
    overrides = {name: values[name] for name in placeholders}
    overrides["output_folder"] = str(tmp_path / "out")
    if "encoder_dim" in text:  # Vesper pretraining: the tiny teacher's width
        overrides["encoder_dim"] = 32
    hparams = load_hyperpyyaml(text, overrides)
    assert hparams["output_folder"] == str(tmp_path / "out")
    if os.path.basename(path).startswith(
        "svm_"
    ):  # the classic baseline: no network to checkpoint
        assert hparams["c_grid"] and hparams["feature_level"] == "functionals"
        return
    assert "checkpointer" in hparams and "modules" in hparams


# One hparams file per method and upstream family --------------------------------------

# Words that name an upstream kind (or a model of one) in a hparams file.
UPSTREAM_WORDS = re.compile(r"wavlm|hubert|vesper\d*|wav2vec2|fbank|ssl", re.I)


def content_without_upstream(text):
    """The non-comment lines of a hparams file with its output folder and every upstream
    kind name blanked: two files equal under it differ only by those."""
    lines = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("output_folder:"):
            line = "output_folder: <blanked>"
        lines.append(UPSTREAM_WORDS.sub("<upstream>", line))
    return "\n".join(lines)


def test_the_comparison_flags_copies_that_differ_by_kind_and_output_folder():
    wavlm = "# WavLM\noutput_folder: !ref results/a_wavlm/<seed>\nupstream: !name:U\n    kind: wavlm\nlr: 0.1\n"
    hubert = "# HuBERT\noutput_folder: !ref results/a_hubert/<seed>\nupstream: !name:U\n    kind: hubert  # HuBERT\nlr: 0.1\n"
    other_lr = hubert.replace("lr: 0.1", "lr: 0.2")
    assert content_without_upstream(wavlm) == content_without_upstream(hubert)
    assert content_without_upstream(wavlm) != content_without_upstream(other_lr)


def test_no_two_hparams_files_differ_only_by_upstream_kind_or_output_folder():
    seen = {}
    for path in HPARAMS_FILES:
        with open(path, encoding="utf-8") as handle:
            key = content_without_upstream(handle.read())
        name = os.path.basename(path)
        assert key not in seen, f"{name} is a copy of {seen.get(key)}"
        seen[key] = name


@pytest.mark.parametrize("method", ["superb", "transformer", "ffn", "bas"])
def test_a_training_default_is_declared_once_per_method_and_family(method):
    """Changing e.g. the SUPERB classifier's learning rate for every SSL upstream is one
    edit: one file per method holds it for the Hugging Face upstreams (kind read from the
    model folder), one for the feature upstreams."""
    declaring = sorted(
        os.path.basename(path)
        for path in HPARAMS_FILES
        if os.path.basename(path).startswith(f"{method}_")
        and re.search(r"^lr:", open(path, encoding="utf-8").read(), re.M)
    )
    assert declaring == [f"{method}_fbank.yaml", f"{method}_ssl.yaml"]
    with open(
        os.path.join(REPO_ROOT, "hparams", f"{method}_ssl.yaml"),
        encoding="utf-8",
    ) as handle:
        assert re.search(r"^    kind: auto$", handle.read(), re.M)
