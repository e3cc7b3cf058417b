"""The exhaustive ranking of a BAS search space and its use in a BAS run's results.

Ranking arithmetic against hand-computed values; end to end on a mini corpus: every
architecture of a 1-layer space is trained with the BAS run's own retraining recipe (its
score equals a direct ``--search=False`` run of that architecture and seed), and a BAS
run given the ranking reports where its derived architecture ranks.
"""

import json
import os
import statistics

import pytest
from recipe_helpers import read_results, run_in_process

from ser_modules.architecture_ranking import (
    all_architectures,
    derived_ranks,
    flatness,
    fold_agreement,
    layer_effects,
    rank_architectures,
    ranking_markdown,
    ranks_markdown,
    refresh_ranking,
    seed_agreement,
    seed_noise,
    selected_valid_score,
)
from ser_modules.downstream.blocks import CANDIDATES
from ser_modules.mini_corpus import generate_mini_corpus
from ser_modules.reports.run_report import results_markdown


def test_the_space_holds_every_architecture_once():
    space = all_architectures(3)
    assert len(space) == 27 and len({tuple(a) for a in space}) == 27
    assert space[0] == ["msa_ffn"] * 3 and space[-1] == ["ffn"] * 3
    assert all(len(a) == 3 and set(a) <= set(CANDIDATES) for a in space)
    assert len(all_architectures(4)) == 81


def test_ranking_sorts_by_mean_and_shares_ranks_on_equal_means():
    rows = rank_architectures(
        {"a": [0.5, 0.7], "b": [0.9], "c": [0.6, 0.6], "d": [0.4]}
    )
    assert [row["architecture"] for row in rows] == ["b", "a", "c", "d"]
    # a and c both average 0.6: they share rank 2, d is 4th.
    assert [row["rank"] for row in rows] == [1, 2, 2, 4]
    assert rows[1]["std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert rows[0]["std"] == 0.0


def test_derived_ranks_and_the_top_third():
    rows = rank_architectures(
        {f"arch{i}": [i / 10] for i in range(9)}
    )  # arch8 best
    ranking = {"folds": {"fold1": rows, "fold2": rows}}
    ranks = derived_ranks(
        {"fold1": ["arch6"], "fold2": ["arch5"], "fold3": ["arch8"]}, ranking
    )
    assert set(ranks) == {"fold1", "fold2"}  # fold3 is not ranked
    assert ranks["fold1"]["rank"] == 3 and ranks["fold1"]["top_third"]
    assert ranks["fold2"]["rank"] == 4 and not ranks["fold2"]["top_third"]
    assert ranks["fold1"]["best"] == "arch8" and ranks["fold1"]["of"] == 9


def test_flatness_compares_the_spread_of_means_with_the_seed_noise():
    rows = rank_architectures(
        {"a": [0.6, 0.8], "b": [0.5, 0.7], "c": [0.4, 0.4]}
    )
    flat = flatness(rows)
    assert flat["range"] == pytest.approx(0.3)
    assert flat["top_third_gap"] == pytest.approx(0.7 - 0.5)
    assert flat["seed_std"] == pytest.approx(((0.02 + 0.02 + 0.0) / 3) ** 0.5)
    assert "| 1 | a | 0.7000 |" in ranking_markdown(
        {"folds": {"fold1": rows}, "seeds": [1, 2]}
    )


def test_seed_noise_is_a_one_way_anova_over_the_seeds():
    from scipy import stats

    scores = {
        "a": [0.70, 0.74, 0.66],
        "b": [0.60, 0.68, 0.61],
        "c": [0.40, 0.45, 0.38],
        "d": [0.69, 0.62, 0.65],
    }
    rows = rank_architectures(scores)
    noise = seed_noise(rows)
    assert noise["anova_p"] == pytest.approx(
        stats.f_oneway(*scores.values()).pvalue
    )
    # eta squared by hand: between-group over total sum of squares.
    values = [v for group in scores.values() for v in group]
    grand = sum(values) / len(values)
    total = sum((v - grand) ** 2 for v in values)
    within = sum(
        (v - statistics.fmean(g)) ** 2 for g in scores.values() for v in g
    )
    assert noise["architecture_share"] == pytest.approx(1 - within / total)
    # Fisher's LSD: t(0.975, N - k) * sqrt(2 * MSE / n), MSE = within / (N - k).
    assert noise["lsd"] == pytest.approx(
        stats.t.ppf(0.975, 8) * (2 * (within / 8) / 3) ** 0.5
    )
    # One seed, or unequal seed counts: nothing to resolve with.
    assert seed_noise(rank_architectures({"a": [0.5], "b": [0.6]})) is None
    assert seed_noise(rank_architectures({"a": [0.5, 0.6], "b": [0.6]})) is None
    # Seeds that agree exactly: every difference is real.
    exact = seed_noise(rank_architectures({"a": [0.5, 0.5], "b": [0.6, 0.6]}))
    assert exact["anova_p"] == 0.0 and exact["lsd"] == 0.0
    text = ranking_markdown({"folds": {"fold1": rows}, "seeds": [1, 2, 3]})
    assert f"p = {noise['anova_p']:.2g}" in text
    assert f"means closer than {noise['lsd']:.4f}" in text


def test_fold_agreement_is_a_two_way_anova_of_the_fold_means():
    # 3 architectures x 2 folds, by hand: grand mean 0.45, architecture means 0.55 / 0.5 /
    # 0.3, fold means 0.5 / 0.4; SS_arch = 2 * (0.01 + 0.0025 + 0.0225) = 0.07, SS_total =
    # 0.095, SS_fold = 0.015, SS_error = 0.01 on 2 df: F = 0.035 / 0.005 = 7, and for
    # F(2, 2) the tail is 1 / (1 + F) = 0.125.
    folds = {
        "fold1": rank_architectures({"a": [0.6], "b": [0.5], "c": [0.4]}),
        # Seeds are averaged first: b's mean is 0.5.
        "fold2": rank_architectures({"a": [0.5], "b": [0.4, 0.6], "c": [0.2]}),
    }
    across = fold_agreement(folds)
    assert across["anova_f"] == pytest.approx(7.0)
    assert across["anova_p"] == pytest.approx(0.125)
    assert across["architecture_share"] == pytest.approx(0.07 / 0.08)
    assert across["folds"] == 2 and across["architectures"] == 3
    # Ranks (3, 2, 1) against (2.5, 2.5, 1), a and b tied on fold 2: Pearson of the
    # ranks is 1.5 / sqrt(2 * 1.5) = sqrt(3) / 2.
    assert across["fold_spearman"] == pytest.approx(3**0.5 / 2)
    text = ranking_markdown({"folds": folds, "seeds": [1]})
    assert f"F = 7.00, p = {across['anova_p']:.2g}" in text
    assert "some architectures" not in text

    # A planted effect consistent over 5 folds is found; shuffled folds are not.
    import numpy as np

    rng = np.random.default_rng(0)
    effect = np.linspace(0.3, 0.7, 27)
    planted = {
        f"fold{j}": rank_architectures(
            {
                f"arch{i}": [float(effect[i] + rng.normal(0, 0.02))]
                for i in range(27)
            }
        )
        for j in range(5)
    }
    found = fold_agreement(planted)
    assert found["anova_p"] < 1e-6 and found["fold_spearman"] > 0.9
    assert "some architectures are better than others on every fold" in (
        ranking_markdown({"folds": planted, "seeds": [1]})
    )
    shuffled = {
        f"fold{j}": rank_architectures(
            {
                f"arch{i}": [float(v)]
                for i, v in enumerate(rng.permutation(effect))
            }
        )
        for j in range(5)
    }
    flat = fold_agreement(shuffled)
    assert flat["anova_p"] > 0.05 and abs(flat["fold_spearman"]) < 0.3
    assert (
        "no architecture is shown to be better than another"
        in ranking_markdown({"folds": shuffled, "seeds": [1]})
    )
    # Folds that differ only by their level: F is undefined (and JSON has no inf).
    shifted = {
        f"fold{j}": rank_architectures(
            {"a": [0.6 + j / 10], "b": [0.5 + j / 10], "c": [0.2 + j / 10]}
        )
        for j in range(3)
    }
    exact = fold_agreement(shifted)
    assert exact["anova_f"] is None and exact["anova_p"] == 0.0
    json.dumps(exact, allow_nan=False)
    assert "(two-way ANOVA of the fold means, p = 0)" in ranking_markdown(
        {"folds": shifted, "seeds": [1]}
    )
    # Only the architectures every fold ranks are compared; one fold is not enough.
    partial = dict(folds, fold3=rank_architectures({"a": [0.1], "b": [0.2]}))
    assert fold_agreement(partial)["architectures"] == 2
    assert fold_agreement({"fold1": folds["fold1"]}) is None


def test_seed_agreement_is_the_mean_spearman_over_pairs_of_seeds():
    from scipy import stats

    scores = {
        "a": [0.7, 0.6, 0.5],
        "b": [0.6, 0.7, 0.4],
        "c": [0.5, 0.4, 0.7],
        "d": [0.4, 0.5, 0.6],
    }
    columns = list(zip(*scores.values()))
    expected = statistics.fmean(
        stats.spearmanr(columns[i], columns[j]).statistic
        for i, j in ((0, 1), (0, 2), (1, 2))
    )
    rows = rank_architectures(scores)
    assert seed_agreement(rows) == pytest.approx(expected)
    assert f"mean Spearman correlation of {expected:.2f}" in ranking_markdown(
        {"folds": {"fold1": rows}, "seeds": [1, 2, 3]}
    )
    assert (
        seed_agreement(rank_architectures({"a": [0.5], "b": [0.6], "c": [0.1]}))
        is None
    )


def test_derived_ranks_say_whether_a_rank_below_the_top_third_is_noise():
    # 6 architectures, 2 seeds: the top third is ranks 1-2.
    scores = {
        "a": [0.80, 0.82],
        "b": [0.70, 0.74],
        "c": [0.68, 0.73],  # 0.015 below b: within the seeds' noise
        "d": [0.30, 0.32],
        "e": [0.31, 0.29],
        "f": [0.20, 0.24],
    }
    rows = rank_architectures(scores)
    lsd = seed_noise(rows)["lsd"]
    assert 0.015 < lsd < 0.72 - 0.31
    ranks = derived_ranks(
        {"fold1": ["c"], "fold2": ["d"], "fold3": ["a"]},
        {"folds": {"fold1": rows, "fold2": rows, "fold3": rows}},
    )
    assert not ranks["fold1"]["top_third"]
    assert ranks["fold1"]["within_noise_of_top_third"]
    assert not ranks["fold2"]["within_noise_of_top_third"]
    assert ranks["fold3"]["top_third"]
    assert ranks["fold3"]["within_noise_of_top_third"]
    # c is beaten significantly only by a (0.81 vs 0.705); d by a, b and c.
    assert ranks["fold1"]["significantly_better"] == 1
    assert ranks["fold2"]["significantly_better"] == 3
    assert ranks["fold3"]["significantly_better"] == 0
    one_seed = rank_architectures({k: v[:1] for k, v in scores.items()})
    assert (
        derived_ranks({"fold1": ["c"]}, {"folds": {"fold1": one_seed}})[
            "fold1"
        ]["within_noise_of_top_third"]
        is None
    )


def planted_folds(
    effect, noise, folds=2, seeds=2, random_seed=0, seed_step=0.02
):
    """Rankings of the 27 3-layer architectures: score = fold level + seed level
    (``seed_step`` per seed) + ``effect`` when layer 1 is ``ffn`` + Gaussian noise (std
    ``noise``)."""
    import numpy as np

    rng = np.random.default_rng(random_seed)
    out = {}
    for fold in range(folds):
        scores = {}
        for architecture in all_architectures(3):
            scores["-".join(architecture)] = [
                0.5
                + 0.1 * fold
                + seed_step * seed
                + (effect if architecture[0] == "ffn" else 0.0)
                + float(rng.normal(0, noise))
                for seed in range(seeds)
            ]
        out[f"fold{fold + 1}"] = rank_architectures(scores)
    return out


def test_layer_effects_are_the_balanced_factorial_anova_by_hand():
    from scipy import stats

    folds = planted_folds(
        effect=0.03, noise=0.05, folds=1, seeds=2, random_seed=3
    )
    effects = layer_effects(folds)
    # By hand, the classical balanced 3^3 x 2-seed ANOVA without interactions:
    # SS_layer = 18 * sum_c (mean_c - grand)^2 on 2 df, SS_seed = 27 * sum_s (...)^2 on
    # 1 df, error = total - seed - the three layers, on 54 - 1 - 1 - 6 = 46 df.
    data = [
        (row["architecture"].split("-"), seed, value)
        for row in folds["fold1"]
        for seed, value in enumerate(row["scores"])
    ]
    grand = statistics.fmean(v for _, _, v in data)
    total = sum((v - grand) ** 2 for _, _, v in data)
    ss_seed = 27 * sum(
        (statistics.fmean(v for _, s, v in data if s == seed) - grand) ** 2
        for seed in (0, 1)
    )
    layer_ss, layer_means = [], []
    for layer in range(3):
        means = {
            block: statistics.fmean(v for a, _, v in data if a[layer] == block)
            for block in CANDIDATES
        }
        layer_means.append(means)
        layer_ss.append(18 * sum((m - grand) ** 2 for m in means.values()))
    error = total - ss_seed - sum(layer_ss)
    assert effects["residual_df"] == 46 and effects["observations"] == 54
    assert effects["residual_std"] == pytest.approx((error / 46) ** 0.5)
    for layer, entry in enumerate(effects["layers"]):
        f_value = (layer_ss[layer] / 2) / (error / 46)
        assert entry["f"] == pytest.approx(f_value)
        assert entry["p"] == pytest.approx(stats.f.sf(f_value, 2, 46))
        for block in CANDIDATES:
            assert entry["effects"][block] == pytest.approx(
                layer_means[layer][block] - grand
            )
    f_all = (sum(layer_ss) / 6) / (error / 46)
    assert effects["all_layers"]["p"] == pytest.approx(stats.f.sf(f_all, 6, 46))


def test_layer_effects_find_a_planted_layer_and_not_the_others():
    effects = layer_effects(planted_folds(effect=0.1, noise=0.03))
    first, second, third = effects["layers"]
    assert first["best"] == "ffn" and first["p"] < 1e-6
    # The planted +0.1 for ffn, centred on the three candidates' average: +2/3 * 0.1.
    assert first["effects"]["ffn"] == pytest.approx(0.0667, abs=0.01)
    assert second["p"] > 0.05 and third["p"] > 0.05
    # The one-way test over the 27 architectures is far weaker against the same effect
    # (20 draws of a +0.05 effect in noise of std 0.04, one fold, two seeds).
    draws = [
        planted_folds(effect=0.05, noise=0.04, folds=1, random_seed=seed)
        for seed in range(20)
    ]
    assert sum(layer_effects(d)["layers"][0]["p"] < 0.05 for d in draws) >= 18
    assert sum(seed_noise(d["fold1"])["anova_p"] < 0.05 for d in draws) <= 12
    weak = draws[3]
    text = ranking_markdown({"folds": weak, "seeds": [1, 2]})
    assert "Per layer, additive model of the test UA over seeds" in text
    assert (
        "Layers whose block matters at 5 %, with their best block: layer 1 (`ffn`)"
        in text
    )
    # Without validation scores there is no validation paragraph.
    assert "validation UA of the selected checkpoints" not in text
    for rows in weak.values():
        for row in rows:
            row["valid_scores"] = list(row["scores"])
    text = ranking_markdown({"folds": weak, "seeds": [1, 2]})
    assert (
        "Per layer, additive model of the validation UA of the selected" in text
    )


def test_the_bas_report_says_which_layers_matter_and_what_the_search_chose():
    effects = layer_effects(planted_folds(effect=0.1, noise=0.03))
    lines = ranks_markdown(
        {
            "architectures": {
                "fold1": ["ffn", "msa", "msa"],
                "fold2": ["msa_ffn", "msa", "msa"],
            },
            "ranking": "ranking.json",
            "ranks": {},
            "layer_effects": effects,
        }
    )
    text = "\n".join(lines)
    assert "layer 1 matters (p = " in text
    assert "`ffn` is best (+0.0" in text
    assert "the search chose it on 1 of 2 splits" in text
    assert "layer 2 is not shown to matter" in text


def test_selected_valid_score_from_the_outcome_or_the_best_checkpoint(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    assert (
        selected_valid_score(
            {"selection": {"set": "valid"}, "selected_score": 0.7},
            str(tmp_path),
            "UA",
        )
        == 0.7
    )
    # Selected on the test set (paper protocol): no validation score.
    assert (
        selected_valid_score(
            {"selection": {"set": "test"}, "selected_score": 0.7},
            str(tmp_path),
            "UA",
        )
        is None
    )
    # Outcomes written before selected_score: the best kept checkpoint's metadata.
    checkpointer = Checkpointer(str(tmp_path / "save"))
    checkpointer.save_checkpoint(meta={"UA": 0.4, "epoch": 1})
    checkpointer.save_checkpoint(meta={"UA": 0.6, "epoch": 2})
    checkpointer.save_checkpoint(meta={"UA": 0.5, "epoch": 3})
    assert selected_valid_score(
        {"selection": {"set": "valid"}}, str(tmp_path), "UA"
    ) == pytest.approx(0.6)
    assert selected_valid_score({}, str(tmp_path / "nothing"), "UA") is None


def test_refresh_matches_old_rows_to_their_runs_by_score(tmp_path):
    # A ranking written before rows recorded their seeds and validation scores, its
    # fold ranked with seeds 7 and 3 (in that order) while ranking.json names another
    # process's seeds: the runs are matched to the scores, not to ranking.json.
    out = tmp_path / "ranking"
    test = {
        "a": {7: 0.6, 3: 0.5},
        "b": {7: 0.4, 3: 0.45},
        "c": {7: 0.3, 3: 0.3},
    }
    valid = {
        "a": {7: 0.9, 3: 0.8},
        "b": {7: 0.7, 3: 0.75},
        "c": {7: 0.1, 3: 0.2},
    }
    for key, by_seed in test.items():
        for seed, score in by_seed.items():
            run = out / "runs" / key / f"seed{seed}" / "fold1"
            run.mkdir(parents=True)
            (run / "test_outcome.json").write_text(
                json.dumps(
                    {
                        "scores": {"UA": score},
                        "selection": {"set": "valid"},
                        "selected_score": valid[key][seed],
                    }
                )
            )
    rows = rank_architectures({k: [v[7], v[3]] for k, v in test.items()})
    (out / "folds").mkdir()
    (out / "folds" / "fold1.json").write_text(json.dumps(rows))
    (out / "ranking.json").write_text(
        json.dumps(
            {"results_format": 2, "metric": "UA", "seeds": [1], "folds": {}}
        )
    )
    refresh_ranking(str(out))
    refreshed = json.loads((out / "ranking.json").read_text())["folds"]["fold1"]
    for row in refreshed:
        assert row["seeds"] == [7, 3]
        key = row["architecture"]
        assert row["valid_scores"] == [valid[key][7], valid[key][3]]
    assert "validation UA of the selected" in (out / "ranking.md").read_text()


def test_results_markdown_reports_the_rank_of_the_derived_architecture():
    results = {
        "dataset": "custom",
        "hparams_file": "bas_fbank.yaml",
        "selection": {"set": "valid", "metric": "UA"},
        "folds": {"fold1": {"WA": 0.5, "UA": 0.5, "WF1": 0.5}},
        "search": {
            "architectures": {"fold1": ["ffn", "msa"]},
            "candidates": list(CANDIDATES),
            "block_wins": [[0, 0, 1], [0, 1, 0]],
            "ties": {"fold1": []},
            "probabilities": {"fold1": [[0.1, 0.2, 0.7], [0.05, 0.9, 0.05]]},
            "ranking": "ranking.json",
            "ranks": {
                "fold1": {
                    "rank": 2,
                    "of": 9,
                    "mean": 0.61,
                    "std": 0.02,
                    "best": "msa-msa",
                    "best_mean": 0.65,
                    "top_third": True,
                    "within_noise_of_top_third": True,
                    "significantly_better": 0,
                }
            },
            "over_folds": {
                "folds": 5,
                "architectures": 9,
                "anova_f": 1.1,
                "anova_p": 0.39,
                "architecture_share": 0.18,
                "fold_spearman": 0.14,
            },
        },
    }
    text = results_markdown(results)
    assert (
        "| fold1 | ffn -> msa | 2 of 9 | 0.6100 +/- 0.0200 | msa -> msa | 0.6500 |"
        in text
    )
    assert "In the top third: 1 of 1 ranked splits." in text
    assert "significantly below the top third (Fisher's" in text
    assert "5 %): 1 of 1; no architecture significantly better: 1 of 1." in text
    assert (
        "Over the ranking's 5 folds, the 9 architectures taken one by one are not "
        "shown to differ consistently "
        "(two-way ANOVA of the fold means, p = 0.39; mean Spearman correlation of "
        "the folds' orders 0.14)." in text
    )
    assert (
        "| fold1 | 0.700 | 0.900 |" in text
    )  # largest softmax(theta) per layer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rank") / "corpus"
    generate_mini_corpus(
        str(folder),
        num_speakers=2,
        utterances_per_class=3,
        duration_range=(0.8, 1.2),
    )
    return str(folder)


def common_arguments(corpus, output):
    return [
        "hparams/bas_fbank.yaml",
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--output_folder={output}",
        f"--cache_folder={os.path.dirname(corpus)}/cache",
        "--number_of_epochs=2",
        "--ffn_dim=16",
        "--batch_size=4",
        "--lr=0.05",
    ]


def test_ranking_trains_every_architecture_with_the_bas_retraining_recipe(
    corpus, tmp_path
):
    ranking_folder = str(tmp_path / "ranking")
    run_in_process(
        "recipes/custom/rank_architectures.py",
        *common_arguments(corpus, ranking_folder),
        "--rank_layers=1",
        "--rank_seeds=1986,4",
    )
    with open(
        os.path.join(ranking_folder, "ranking.json"), encoding="utf-8"
    ) as handle:
        ranking = json.load(handle)
    rows = ranking["folds"]["main"]
    assert sorted(row["architecture"] for row in rows) == sorted(CANDIDATES)
    assert all(len(row["scores"]) == 2 for row in rows)
    assert all(row["seeds"] == [1986, 4] for row in rows)
    assert all(
        len(row["valid_scores"]) == 2
        and all(0.0 <= value <= 1.0 for value in row["valid_scores"])
        for row in rows
    )
    assert set(ranking["layer_effects"]) == {"test", "valid"}
    # refresh_ranking rebuilds the validation scores of rows written without them from
    # the runs (the best checkpoint's metadata) and rewrites the same ranking.
    fold_file = os.path.join(ranking_folder, "folds", "main.json")
    with open(fold_file, encoding="utf-8") as handle:
        stored = json.load(handle)
    for row in stored:
        del row["valid_scores"]
    with open(fold_file, "w", encoding="utf-8") as handle:
        json.dump(stored, handle)
    for row in rows:  # and from the outcome's selected_score when it has one
        run = os.path.join(
            ranking_folder, "runs", row["architecture"], "seed4", "main"
        )
        with open(
            os.path.join(run, "test_outcome.json"), encoding="utf-8"
        ) as handle:
            assert json.load(handle)["selected_score"] == pytest.approx(
                row["valid_scores"][1]
            )
    refresh_ranking(ranking_folder)
    with open(
        os.path.join(ranking_folder, "ranking.json"), encoding="utf-8"
    ) as handle:
        refreshed = json.load(handle)
    assert refreshed["folds"]["main"] == rows
    assert os.path.isfile(os.path.join(ranking_folder, "ranking.md"))
    # The ranking says what it trained (ser_modules.run_identity).
    assert ranking["results_format"] == 2
    identity = ranking["identity"]
    assert (
        identity["model"]["downstream_model"],
        identity["model"]["search"],
    ) == (
        "blocks",
        False,
    )
    assert identity["upstream"]["kind"] == "fbank"
    assert identity["protocol"]["preparation"]["split"] == "stratified"
    # train.py's default groups, small-corpus defaults included (the command line wins)
    assert ranking["overrides"]["optimizer"] == "adamw"
    assert ranking["overrides"]["pooling"] == "stats"
    assert ranking["overrides"]["lr"] == 0.05

    # The same architecture and seed trained by the recipe directly scores the same
    # (--seed is the training seed; the preparation's split seed is --split_seed).
    direct = str(tmp_path / "direct")
    run_in_process(
        "recipes/custom/train.py",
        *common_arguments(corpus, direct),
        "--search=False",
        "--downstream_model=blocks",
        "--architecture=[msa]",
        "--num_layers=1",
        "--seed=4",
    )
    msa = next(row for row in rows if row["architecture"] == "msa")
    assert read_results(direct)["folds"]["main"]["UA"] == pytest.approx(
        msa["scores"][1]
    )

    # A BAS run given the ranking reports the rank of what it derived.
    bas = str(tmp_path / "bas")
    run_in_process(
        "recipes/custom/train.py",
        *common_arguments(corpus, bas),
        "--search_layers=1",
        "--search_epochs=2",
        f"--architecture_ranking={ranking_folder}/ranking.json",
    )
    assert read_results(direct)["identity"]["model"]["architecture"] == ["msa"]
    results = read_results(bas)
    assert results["identity"]["model"]["search"] is True
    assert results["identity"]["model"]["search_layers"] == 1
    search = results["search"]
    derived = "-".join(search["architectures"]["main"])
    expected = next(
        row["rank"] for row in rows if row["architecture"] == derived
    )
    assert (
        search["ranks"]["main"]["rank"] == expected
        and search["ranks"]["main"]["of"] == 3
    )
    with open(os.path.join(bas, "results.md"), encoding="utf-8") as handle:
        assert f"| {expected} of 3 |" in handle.read()
