"""Statistics pooling and the optimiser switch of the small-corpus defaults.

Stats pooling is checked against mean / standard deviation computed by hand on each
utterance's valid frames alone; the models built with it must ignore padding.
"""

import pytest
import torch

from ser_modules.downstream.factory import build_downstream
from ser_modules.downstream.models import masked_stats_pool
from ser_modules.optimizers import optimizer_factory


def test_stats_pool_is_mean_and_std_of_the_valid_frames():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 4)
    x[1, 5:] = float("nan")  # garbage padding of a 5-frame utterance
    x[2, 1:] = 1e6  # a 1-frame utterance
    lens = torch.tensor([1.0, 5 / 7, 1 / 7])
    pooled = masked_stats_pool(x, lens)
    assert pooled.shape == (3, 8)
    for index, frames in enumerate([7, 5, 1]):
        valid = x[index, :frames].double()
        expected_std = valid.std(dim=0, unbiased=False).clamp(min=1e-4)
        torch.testing.assert_close(
            pooled[index, :4].double(), valid.mean(dim=0), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            pooled[index, 4:].double(), expected_std, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("model", ["superb", "ffn", "transformer"])
def test_models_with_stats_pooling_ignore_padding(model):
    torch.manual_seed(1)
    net = build_downstream(
        model,
        input_dim=8,
        num_classes=3,
        num_layers=2,
        hidden=16,
        num_heads=2,
        ffn_dim=16,
        dropout=0.0,
        pooling="stats",
    ).eval()
    alone = torch.randn(1, 5, 8)
    padded = torch.cat([alone, torch.full((1, 4, 8), 3.0)], dim=1)
    torch.testing.assert_close(
        net(alone, torch.ones(1)),
        net(padded, torch.tensor([5 / 9])),
        rtol=1e-5,
        atol=1e-5,
    )
    assert net.classifier.in_features == 2 * (16 if model == "superb" else 8)


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="Unknown pooling"):
        build_downstream("superb", input_dim=8, num_classes=3, pooling="max")


def test_optimizer_factory_builds_the_named_optimizer_with_its_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = optimizer_factory("sgd", lr=0.1, momentum=0.8, weight_decay=0.01)(
        params
    )
    adamw = optimizer_factory("adamw", lr=0.002, weight_decay=0.05)(params)
    assert (
        isinstance(sgd, torch.optim.SGD)
        and sgd.defaults["momentum"] == 0.8
        and sgd.defaults["lr"] == 0.1
    )
    assert (
        isinstance(adamw, torch.optim.AdamW)
        and adamw.defaults["weight_decay"] == 0.05
    )
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimizer_factory("lamb", lr=0.1)


def custom_recipe():
    """``recipes/custom/train.py`` as a module (it imports custom_prepare beside it)."""
    import os
    import sys

    from prepare_helpers import REPO_ROOT, load_recipe_module

    sys.path.insert(0, os.path.join(REPO_ROOT, "recipes", "custom"))
    try:
        return load_recipe_module("recipes/custom/train.py")
    finally:
        sys.path.pop(0)


def test_custom_recipe_applies_small_corpus_defaults_only_to_files_with_their_switches():
    import os

    from prepare_helpers import REPO_ROOT

    from ser_modules.recipe import recipe_overrides

    custom = custom_recipe()
    assert custom.DEFAULT_GROUPS == (
        custom.DATASET_DEFAULTS,
        custom.SMALL_CORPUS_DEFAULTS,
        custom.SMALL_CORPUS_SEARCH_DEFAULTS,
    )
    both = {**custom.DATASET_DEFAULTS, **custom.SMALL_CORPUS_DEFAULTS}
    search = custom.SMALL_CORPUS_SEARCH_DEFAULTS
    every = {**both, **search}

    def applied(name):
        path = os.path.join(REPO_ROOT, "hparams", name)
        _, overrides = recipe_overrides(
            path, "", "custom", *custom.DEFAULT_GROUPS
        )
        return {key: overrides[key] for key in every if key in overrides}

    for name in (
        "superb_fbank.yaml",
        "ffn_fbank.yaml",
        "transformer_fbank.yaml",
    ):
        assert applied(name) == both
        assert both["optimizer"] == "adamw" and both["pooling"] == "stats"
    # BAS on features: the search's super net trains with the retraining's AdamW too.
    assert applied("bas_fbank.yaml") == every
    assert search["search_optimizer"] == search["optimizer"] == "adamw"
    assert search["search_lr"] == both["lr"]
    assert search["search_weight_decay"] == both["weight_decay"]
    # SSL files keep their papers' training setup (no optimizer switch), and bas_ssl its
    # paper search (it has the search's switches, not the retraining's).
    assert applied("superb_ssl.yaml") == custom.DATASET_DEFAULTS
    assert applied("bas_ssl.yaml") == custom.DATASET_DEFAULTS


def test_small_corpus_defaults_reach_bas_retraining_and_its_search(tmp_path):
    """bas_fbank under recipes/custom: the derived network retrains with AdamW and weight
    decay 0.01, and the super net's weights train with the same AdamW; the paper
    datasets keep the paper's SGD for both."""
    import os

    from hyperpyyaml import load_hyperpyyaml
    from prepare_helpers import REPO_ROOT

    from ser_modules.recipe import recipe_overrides

    custom = custom_recipe()
    path = os.path.join(REPO_ROOT, "hparams", "bas_fbank.yaml")
    yaml_text, overrides = recipe_overrides(
        path, "", "custom", *custom.DEFAULT_GROUPS
    )
    # loading builds the checkpointer, which makes its folder: keep it in tmp_path
    where = {"data_folder": "x", "output_folder": str(tmp_path)}
    hparams = load_hyperpyyaml(yaml_text, {**overrides, **where})
    weights = [torch.nn.Parameter(torch.zeros(2))]
    retrain = hparams["opt_class"](weights)
    search = hparams["search_opt_class"](weights)
    assert isinstance(retrain, torch.optim.AdamW)
    assert retrain.defaults["lr"] == custom.SMALL_CORPUS_DEFAULTS["lr"]
    assert retrain.defaults["weight_decay"] == 0.01
    assert type(search) is torch.optim.AdamW
    assert search.defaults["lr"] == hparams["search_lr"] == 0.001
    assert (
        search.defaults["weight_decay"]
        == hparams["search_weight_decay"]
        == 0.01
    )
    assert hparams["pooling"] == "stats" and hparams["number_of_epochs"] == 50
    # The search's optimiser is one switch away (search_optimizer), like the retraining's.
    switched = load_hyperpyyaml(
        yaml_text,
        {**overrides, **where, "search_optimizer": "sgd"},
    )["search_opt_class"](weights)
    assert type(switched) is torch.optim.SGD
    assert switched.defaults["lr"] == 0.001
    # without the defaults (IEMOCAP & co.) the retraining is the paper's SGD
    yaml_text, overrides = recipe_overrides(path, "", "IEMOCAP")
    paper = load_hyperpyyaml(yaml_text, {**overrides, **where})
    sgd = paper["opt_class"](weights)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["lr"] == 0.005
    assert sgd.defaults["weight_decay"] == 0.0001 and paper["pooling"] == "mean"
    paper_search = paper["search_opt_class"](weights)
    assert type(paper_search) is torch.optim.SGD
    assert paper_search.defaults["lr"] == 0.005
    assert paper_search.defaults["weight_decay"] == 0.0001
