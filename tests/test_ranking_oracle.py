"""The oracle check of a ranking's top third (ser_modules/ranking_oracle.py)."""

import numpy as np
import pytest
from scipy import stats
from test_architecture_ranking import planted_folds

from ser_modules.architecture_ranking import (
    all_architectures,
)
from ser_modules.ranking_oracle import (
    additive_means,
    binomial_at_least,
    main,
    oracle_top_third,
    seed_noise_std,
)


def planted(effect, noise, folds=5, seeds=2, random_seed=0, seed_step=0.03):
    """score = fold level + seed level + ``effect`` when layer 1 is ffn + noise."""
    return planted_folds(effect, noise, folds, seeds, random_seed, seed_step)


def test_the_seed_noise_is_the_two_way_residual_not_the_seed_level():
    folds = planted(
        effect=0.0, noise=0.05, folds=1, seeds=4, random_seed=1, seed_step=0.1
    )
    rows = folds["fold1"]
    # Close to the planted 0.05 although every seed is shifted by 0.1 more than the last.
    assert seed_noise_std(rows) == pytest.approx(0.05, rel=0.2)
    scores = np.array([row["scores"] for row in rows])
    naive = float(np.sqrt(scores.var(axis=1, ddof=1).mean()))
    assert (
        naive > 0.06
    )  # the seed levels inflate a plain within-architecture std
    assert seed_noise_std([{"scores": [0.5]}, {"scores": [0.6]}]) is None


def test_the_additive_fit_reproduces_an_additive_table_exactly():
    keys = ["-".join(a) for a in all_architectures(3)]
    level = {"msa_ffn": 0.0, "msa": 0.1, "ffn": 0.3}
    means = [
        0.4 + level[k.split("-")[0]] - 0.2 * (k.split("-")[2] == "msa")
        for k in keys
    ]
    assert additive_means(keys, means) == pytest.approx(means, abs=1e-12)


def test_a_clear_block_effect_puts_the_oracle_in_the_top_third_and_noise_does_not():
    clear = oracle_top_third(planted(effect=0.3, noise=0.01), draws=2000)
    assert all(
        entry["oracle"].startswith("ffn-") and entry["p_top_third"] > 0.99
        for entry in clear["folds"].values()
    )
    assert clear["p_at_least"] > 0.99
    # An architecture with an msa_ffn first layer is out of the top third.
    worse = oracle_top_third(
        planted(effect=0.3, noise=0.01),
        draws=2000,
        architecture="msa_ffn-msa_ffn-msa_ffn",
    )
    assert worse["p_at_least"] < 0.01 and worse["architecture"] is not None
    # No effect at all: the fitted means still fit noise, so the oracle estimate is above
    # a random pick, and the shuffled rankings show that bias: the estimate is near them.
    flat = oracle_top_third(planted(effect=0.0, noise=0.05), draws=4000)
    assert flat["random"] == pytest.approx(stats.binom.sf(2, 5, 1 / 3))
    assert abs(flat["p_at_least"] - flat["null"]) < 0.2
    # A planted layer-1 effect as large as the seed noise stands out from that bias.
    real = oracle_top_third(planted(effect=0.05, noise=0.05), draws=2000)
    assert real["p_at_least"] > 0.8 and real["p_at_least"] - real["null"] > 0.25


def test_folds_with_one_seed_are_left_out_and_bad_input_is_refused(tmp_path):
    folds = planted(effect=0.1, noise=0.02, folds=2)
    folds["fold3"] = planted(effect=0.1, noise=0.02, folds=1, seeds=1)["fold1"]
    result = oracle_top_third(folds, draws=500)
    assert result["left_out"] == ["fold3"] and set(result["folds"]) == {
        "fold1",
        "fold2",
    }
    assert result["random"] == pytest.approx(binomial_at_least(2, 1 / 3, 3))
    with pytest.raises(ValueError, match="--rank_seeds"):
        oracle_top_third({"fold1": folds["fold3"]})
    with pytest.raises(ValueError, match="not in the ranking"):
        oracle_top_third(folds, architecture="ffn-ffn")


def test_the_command_reads_a_ranking_file(tmp_path, capsys):
    import json

    path = tmp_path / "ranking.json"
    path.write_text(
        json.dumps({"folds": planted(effect=0.3, noise=0.01, folds=3)}),
        encoding="utf-8",
    )
    result = main([str(path), "--draws=500", "--min_folds=2"])
    out = capsys.readouterr().out
    assert "P(top third on >= 2 of 3 folds): oracle 1.00" in out
    assert result["min_folds"] == 2
