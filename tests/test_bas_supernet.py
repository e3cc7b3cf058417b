"""Specification of the BAS super net and of the architecture tools (supernet/architecture)."""

import json
import math

import matplotlib.image
import pytest
import torch

from ser_modules.downstream.architecture import (
    architecture_probabilities,
    block_win_counts,
    derive_architecture,
    format_block_table,
    load_architecture,
    plot_theta_heatmap,
    save_architecture,
)
from ser_modules.downstream.blocks import CANDIDATES
from ser_modules.downstream.models import BlockStackClassifier, masked_mean_pool
from ser_modules.downstream.supernet import (
    BASSuperNet,
    SearchableLayer,
    derived_state_dict,
    fbnet_temperature,
)

DIM, HEADS, FFN_DIM, CLASSES = 16, 2, 24, 4
WIDTHS = dict(num_heads=HEADS, ffn_dim=FFN_DIM)


def _supernet_choosing(architecture, dropout=0.0, margin=30.0):
    """A super net whose thetas point clearly at ``architecture`` (one name per layer)."""
    torch.manual_seed(0)
    supernet = BASSuperNet(
        DIM, CLASSES, len(architecture), dropout=dropout, **WIDTHS
    )
    with torch.no_grad():
        for theta, name in zip(
            supernet.architecture_parameters(), architecture
        ):
            theta.zero_()
            theta[CANDIDATES.index(name)] = margin
    return supernet


def _mean_max_weight(layer, temperature, draws=2000):
    return torch.stack(
        [layer.sample_weights(temperature).max() for _ in range(draws)]
    ).mean()


def test_gumbel_weights_are_a_distribution():
    torch.manual_seed(0)
    layer = SearchableLayer(DIM, HEADS, FFN_DIM, 0.0)
    with torch.no_grad():
        layer.theta.copy_(torch.tensor([0.5, -1.0, 2.0]))
    weights = torch.stack(
        [layer.sample_weights(1.0) for _ in range(200)]
    )  # (200, K)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(200))


def test_lower_temperature_gives_more_peaked_gumbel_weights():
    torch.manual_seed(0)
    layer = SearchableLayer(DIM, HEADS, FFN_DIM, 0.0)
    peaks = [_mean_max_weight(layer, tau) for tau in (5.0, 1.0, 0.1)]
    assert peaks[0] < peaks[1] < peaks[2]
    assert peaks[2] > 0.9


def test_very_high_temperature_gives_near_uniform_gumbel_weights():
    torch.manual_seed(0)
    layer = SearchableLayer(DIM, HEADS, FFN_DIM, 0.0)
    with torch.no_grad():
        layer.theta.copy_(torch.tensor([2.0, 0.0, -2.0]))
    weights = torch.stack([layer.sample_weights(1e4) for _ in range(100)])
    torch.testing.assert_close(
        weights, torch.full_like(weights, 1 / 3), rtol=0, atol=2e-3
    )


def test_training_output_approaches_the_argmax_path_at_low_temperature():
    supernet = _supernet_choosing(["ffn", "msa", "msa_ffn"])
    supernet.set_temperature(1e-3)
    x = torch.randn(2, 5, DIM)
    lens = torch.tensor([1.0, 0.6])
    mixed = supernet.train()(x, lens)
    argmax_path = supernet.eval()(x, lens)
    torch.testing.assert_close(mixed, argmax_path, rtol=1e-5, atol=1e-5)


def test_evaluation_runs_only_the_argmax_candidate_of_each_layer():
    architecture = ["msa", "ffn", "msa_ffn"]
    supernet = _supernet_choosing(architecture, margin=0.5).eval()
    x = torch.randn(2, 5, DIM)
    lens = torch.tensor([1.0, 0.6])
    padding_mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    hidden = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    with torch.no_grad():
        for layer, name in zip(supernet.layers, architecture):
            hidden = layer.candidates[name](hidden, padding_mask)
        expected = supernet.classifier(masked_mean_pool(hidden, lens))
        torch.testing.assert_close(supernet(x, lens), expected)


def test_derived_network_reproduces_the_supernet_path():
    architecture = ["ffn", "msa_ffn", "msa", "msa"]
    supernet = _supernet_choosing(architecture).eval()
    derived = BlockStackClassifier(
        DIM, CLASSES, architecture, dropout=0.0, **WIDTHS
    ).eval()
    derived.load_state_dict(
        derived_state_dict(supernet, architecture)
    )  # strict: same keys
    x = torch.randn(3, 6, DIM)
    lens = torch.tensor([1.0, 0.5, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(
            derived(x, lens), supernet(x, lens), rtol=0, atol=1e-6
        )


def test_derived_state_dict_keeps_the_input_projection():
    supernet = BASSuperNet(DIM, CLASSES, 2, model_dim=8, **WIDTHS)
    state = derived_state_dict(supernet, ["ffn", "msa"])
    assert torch.equal(
        state["input_projection.weight"], supernet.input_projection.weight
    )
    assert "temperature" not in state
    assert not any("theta" in key or "candidates" in key for key in state)


def test_derived_state_dict_rejects_a_block_outside_the_candidates():
    supernet = BASSuperNet(DIM, CLASSES, 2, candidates=("msa", "ffn"), **WIDTHS)
    with pytest.raises(ValueError, match="msa_ffn"):
        derived_state_dict(supernet, ["ffn", "msa_ffn"])


def test_thetas_start_at_zero_and_are_separate_from_the_weights():
    supernet = BASSuperNet(DIM, CLASSES, 3, **WIDTHS)
    thetas = supernet.architecture_parameters()
    weights = supernet.weight_parameters()
    assert len(thetas) == 3
    assert all(
        torch.equal(theta, torch.zeros(len(CANDIDATES))) for theta in thetas
    )
    assert {id(p) for p in thetas}.isdisjoint(id(p) for p in weights)
    assert len(thetas) + len(weights) == len(list(supernet.parameters()))


def test_training_step_gives_every_theta_a_gradient():
    torch.manual_seed(0)
    supernet = BASSuperNet(DIM, CLASSES, 3, dropout=0.0, **WIDTHS).train()
    logits = supernet(torch.randn(4, 5, DIM), torch.ones(4))
    torch.nn.functional.cross_entropy(
        logits, torch.tensor([0, 1, 2, 3])
    ).backward()
    for theta in supernet.architecture_parameters():
        assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_temperature_is_saved_in_the_state_dict():
    supernet = BASSuperNet(DIM, CLASSES, 2, **WIDTHS)
    supernet.set_temperature(0.7)
    restored = BASSuperNet(DIM, CLASSES, 2, **WIDTHS)
    restored.load_state_dict(supernet.state_dict())
    assert restored.temperature.item() == pytest.approx(0.7)


def test_fbnet_temperature_decays_exponentially_from_epoch_one():
    assert fbnet_temperature(1) == pytest.approx(5.0)
    assert fbnet_temperature(11) == pytest.approx(5.0 * math.exp(-0.45))
    assert fbnet_temperature(3, initial=2.0, decay=0.5) == pytest.approx(
        2.0 * math.exp(-1.0)
    )


def test_derive_architecture_takes_the_largest_theta_per_layer():
    theta = torch.tensor([[0.1, 0.2, 0.9], [0.5, -1.0, 0.0], [0.0, 3.0, 1.0]])
    assert derive_architecture(theta) == (["ffn", "msa_ffn", "msa"], [])


def test_derive_architecture_breaks_ties_to_the_first_candidate_and_reports_them():
    theta = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    assert derive_architecture(theta) == (["msa_ffn", "msa", "ffn"], [0, 1])


def test_derive_architecture_reads_the_thetas_of_a_supernet():
    supernet = _supernet_choosing(["ffn", "msa"], margin=0.3)
    assert derive_architecture(supernet) == (["ffn", "msa"], [])


def test_architecture_probabilities_are_the_softmax_of_theta():
    theta = torch.tensor([[0.0, math.log(3.0), 0.0]])
    expected = torch.tensor([[0.2, 0.6, 0.2]])
    torch.testing.assert_close(architecture_probabilities(theta), expected)


def test_architecture_json_round_trip(tmp_path):
    path = tmp_path / "search" / "architecture.json"
    probabilities = torch.tensor(
        [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]], dtype=torch.float64
    )
    save_architecture(
        path, ["ffn", "msa_ffn"], probabilities, CANDIDATES, ties=[1]
    )
    loaded = load_architecture(path)
    assert loaded["architecture"] == ["ffn", "msa_ffn"]
    assert loaded["candidates"] == list(CANDIDATES)
    assert loaded["ties"] == [1]
    torch.testing.assert_close(loaded["probabilities"], probabilities)
    assert [p.name for p in path.parent.iterdir()] == [
        "architecture.json"
    ]  # no temp file


def test_load_architecture_names_the_file_when_keys_are_missing(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"architecture": ["ffn"]}))
    with pytest.raises(ValueError, match="broken.json"):
        load_architecture(path)


def test_theta_heatmap_is_a_png_of_the_expected_size(tmp_path):
    path = tmp_path / "theta.png"
    probabilities = torch.softmax(torch.randn(4, 3), dim=1)
    plot_theta_heatmap(
        probabilities, CANDIDATES, path, "WavLM Large, IEMOCAP fold 1", dpi=100
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # (2.5 + 1.5 * 3 candidates) x (1.5 + 0.5 * 4 layers) inches at 100 dpi.
    assert matplotlib.image.imread(path).shape[:2] == (350, 700)


def test_block_win_counts_tallies_the_winner_of_each_layer():
    architectures = [["ffn", "msa"], ["ffn", "msa_ffn"], ["msa", "msa"]]
    counts = block_win_counts(architectures)
    assert torch.equal(counts, torch.tensor([[0, 1, 2], [1, 2, 0]]))


def test_block_win_counts_rejects_architectures_of_different_depths():
    with pytest.raises(ValueError, match="layers"):
        block_win_counts([["ffn", "msa"], ["ffn"]])


def test_format_block_table_prints_one_row_per_layer_under_a_header():
    text = format_block_table(
        torch.tensor([[2, 0, 1]]), CANDIDATES, value_format="{:d}"
    )
    assert text.splitlines() == [
        "layer  msa_ffn  msa  ffn",
        "    1        2    0    1",
    ]
