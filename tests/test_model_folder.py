"""The model-folder checks every load runs first (ser_modules/model_folder.py): a folder
that is not one is named, its YAML may only name allow-listed classes and factories, and
truncated upstream weights are named.

The end-to-end checks (a folder exported by a recipe run, loaded, tampered with) are in
``test_inference.py``.
"""

import os

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from safetensors.torch import save_file

from ser_modules.model_folder import (
    ALLOWED_CALLS,
    ModelFolderError,
    check_model_folder,
    check_safetensors_file,
    check_yaml_is_safe,
)
from ser_modules.upstreams import FbankUpstream

# Every kind of tag an exported hyperparams.yaml uses, with the factories of the allow-list.
ALLOWED_YAML = """\
sample_rate: 16000
window_seconds: 1.5
hop_seconds: !ref <window_seconds>
upstream: !apply:ser_modules.upstreams.build_upstream
    kind: fbank
    n_mels: 40
layer_combiner: !new:ser_modules.downstream.LayerCombiner
    num_layers: 1
    mode: weighted_sum
downstream: !apply:ser_modules.downstream.factory.build_downstream
    model: superb
    input_dim: 40
    num_classes: 4
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
modules:
    upstream: !ref <upstream>
    downstream: !ref <downstream>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        downstream: !ref <downstream>
"""


def test_folder_without_hyperparams_is_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="no hyperparams.yaml"):
        check_model_folder(tmp_path)
    with pytest.raises(ModelFolderError, match="does not exist"):
        check_model_folder(tmp_path / "nowhere")


def test_the_allow_listed_factories_pass_the_check_and_build(tmp_path):
    # Exported folders name these factories in their YAML: moving or renaming one would
    # break every model folder written before.
    assert set(ALLOWED_CALLS) == {
        "ser_modules.downstream.factory.build_downstream",
        "ser_modules.upstreams.build_upstream",
    }
    path = tmp_path / "hyperparams.yaml"
    path.write_text(ALLOWED_YAML, encoding="utf-8")
    check_yaml_is_safe(str(path))
    hparams = load_hyperpyyaml(ALLOWED_YAML)
    assert isinstance(hparams["upstream"], FbankUpstream)
    feats, _ = hparams["upstream"](torch.zeros(1, 16000))
    logits = hparams["downstream"](
        hparams["layer_combiner"](feats), torch.ones(1)
    )
    assert logits.shape == (1, 4)


@pytest.mark.parametrize(
    "line",
    [
        'hello: !apply:os.system ["touch executed"]',
        "hello: !name:builtins.eval",
        "hello: !module:os",
        # A project factory with !new:, and a project class with !apply:, are refused too:
        # only classes (torch modules) may be built and only ALLOWED_CALLS called.
        "hello: !new:ser_modules.upstreams.build_upstream",
        "hello: !apply:ser_modules.upstreams.FbankUpstream",
        "hello: !new:ser_modules.recipe.run_split",
    ],
)
def test_a_tag_outside_the_allow_list_is_refused_naming_its_line(
    tmp_path, line
):
    path = tmp_path / "hyperparams.yaml"
    path.write_text(ALLOWED_YAML + line + "\n", encoding="utf-8")
    tag = line.split()[1]
    line_number = ALLOWED_YAML.count("\n") + 1
    with pytest.raises(
        ModelFolderError, match=f"line {line_number} uses the tag '{tag}'"
    ):
        check_yaml_is_safe(str(path))


def test_a_truncated_safetensors_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.randn(64, 64)}, str(path))
    check_safetensors_file(str(path))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 100)
    with pytest.raises(
        ModelFolderError,
        match=r"model.safetensors holds .* bytes but its header describes",
    ):
        check_safetensors_file(str(path))
