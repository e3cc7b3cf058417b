"""Ground truth for a BAS search space: train every architecture of it and rank them.

A differentiable search is only worth its derived architecture if that architecture is
good among *all* architectures of the space. With 3 candidates and L layers the space
holds ``3^L`` networks (27 for L = 3), few enough to train each one stand-alone with the
same retraining recipe the BAS run uses after its search (same YAML, same overrides,
``search=False``, ``downstream_model=blocks``), on one or more folds and seeds::

    python recipes/custom/rank_architectures.py hparams/bas_fbank.yaml \
        --data_folder=CORPUS --labels_csv=labels.csv --output_folder=OUT \
        --rank_layers=3 --rank_seeds=1986,1987 [--fold=1] [--number_of_epochs=30]

writes ``OUT/ranking.json`` and ``OUT/ranking.md``: per fold, every architecture's test UA
per seed, its mean and spread, and its rank (1 = best mean UA). A BAS run given
``--architecture_ranking=OUT/ranking.json`` then reports in its ``results.md`` where the
architecture it derived ranks on each fold (:func:`derived_ranks`).

Every trained architecture is one fold run of the recipe (its ``train.py``'s ``run_fold``):
it keeps its ``test_outcome.json``, so an interrupted ranking resumes where it stopped, and
the feature cache is built once for all of them.
"""

import argparse
import itertools
import json
import logging
import math
import os
import statistics
import sys

from ser_modules.downstream.blocks import CANDIDATES
from ser_modules.manifest import atomic_write_text

logger = logging.getLogger(__name__)

RANKING_FILE = "ranking.json"
RANKING_MARKDOWN = "ranking.md"


def all_architectures(num_layers, candidates=CANDIDATES):
    """Every architecture of the search space, in a fixed (lexicographic) order.

    Arguments
    ---------
    num_layers : int
        L, the number of searchable layers.
    candidates : sequence of str
        The candidate blocks of every layer.

    Returns
    -------
    list of list of str
        ``len(candidates) ** num_layers`` architectures, first layer first.
    """
    if num_layers < 1:
        raise ValueError(
            f"An architecture needs at least one layer, got {num_layers}."
        )
    return [
        list(path)
        for path in itertools.product(candidates, repeat=int(num_layers))
    ]


def architecture_key(architecture):
    """The text key of an architecture in the ranking file: ``"ffn-msa-msa_ffn"``."""
    return "-".join(architecture)


def rank_architectures(scores):
    """Rank architectures by their mean score over seeds.

    Arguments
    ---------
    scores : dict
        ``{architecture_key: [score of seed 1, score of seed 2, ...]}`` (one or more each).

    Returns
    -------
    list of dict
        Best first: ``architecture`` (key), ``scores``, ``mean``, ``std`` (sample std over
        seeds, 0 with one seed) and ``rank``: 1 + the number of architectures with a
        strictly larger mean, so equal means share a rank (competition ranking).
    """
    rows = []
    for key, values in scores.items():
        values = [float(v) for v in values]
        if not values:
            raise ValueError(f"Architecture {key} has no scores.")
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(
            {"architecture": key, "scores": values, "mean": mean, "std": std}
        )
    rows.sort(key=lambda row: (-row["mean"], row["architecture"]))
    for row in rows:
        row["rank"] = 1 + sum(
            1 for other in rows if other["mean"] > row["mean"]
        )
    return rows


def flatness(rows):
    """How flat a fold's ranking is: the spread of means against the seed noise.

    Returns
    -------
    dict
        ``best``, ``worst``, ``range`` (best - worst mean), ``top_third_gap`` (mean of the
        best third minus mean of the rest) and ``seed_std`` (root mean square of the
        per-architecture std over seeds, None with one seed).
    """
    means = [row["mean"] for row in rows]
    third = max(1, math.ceil(len(rows) / 3))
    stds = [row["std"] for row in rows if len(row["scores"]) > 1]
    rest = means[third:] or means
    return {
        "best": max(means),
        "worst": min(means),
        "range": max(means) - min(means),
        "top_third_gap": statistics.fmean(means[:third])
        - statistics.fmean(rest),
        "seed_std": math.sqrt(statistics.fmean([s * s for s in stds]))
        if stds
        else None,
    }


def seed_noise(rows, alpha=0.05):
    """Which differences between architectures the seeds can resolve.

    A one-way analysis of variance of the scores with the architecture as the factor and
    the seeds as replicates (every architecture trained with the same number of seeds).

    Arguments
    ---------
    rows : list of dict
        A fold's ranking (:func:`rank_architectures`).
    alpha : float
        Significance level of the least significant difference.

    Returns
    -------
    dict or None
        ``architecture_share`` (between-architecture sum of squares over the total sum of
        squares, eta squared: 1 when the seeds agree exactly, about (k - 1) / (N - 1) when
        the architecture does not matter), ``anova_p`` (p-value of the F test that every
        architecture has the same expected score) and ``lsd`` (Fisher's least significant
        difference: two means further apart than this differ at level ``alpha``).
        None with one seed, fewer than two architectures or unequal seed counts.
    """
    from scipy import stats

    counts = {len(row["scores"]) for row in rows}
    if len(rows) < 2 or len(counts) != 1 or counts == {1}:
        return None
    n = counts.pop()
    k = len(rows)
    scores = [value for row in rows for value in row["scores"]]
    grand = statistics.fmean(scores)
    between = n * sum((row["mean"] - grand) ** 2 for row in rows)
    within = sum((v - row["mean"]) ** 2 for row in rows for v in row["scores"])
    df_within = k * (n - 1)
    mse = within / df_within
    if mse > 0:
        anova_p = float(stats.f.sf((between / (k - 1)) / mse, k - 1, df_within))
    else:  # the seeds agree exactly: any difference of means is real
        anova_p = 0.0 if between > 0 else 1.0
    total = between + within
    return {
        "architecture_share": between / total if total > 0 else 0.0,
        "anova_p": anova_p,
        "lsd": float(stats.t.ppf(1 - alpha / 2, df_within))
        * math.sqrt(2 * mse / n),
    }


def _mean_spearman(columns):
    """Mean Spearman correlation over every pair of score columns; None when undefined.

    A constant column has no order to correlate with: pairs with one are left out.
    """
    from scipy import stats

    rhos = [
        float(stats.spearmanr(x, y).statistic)
        for x, y in itertools.combinations(columns, 2)
        if len(set(x)) > 1 and len(set(y)) > 1
    ]
    return statistics.fmean(rhos) if rhos else None


def seed_agreement(rows):
    """How well a fold's ranking replicates from one seed to another.

    Returns
    -------
    float or None
        The mean Spearman rank correlation, over every pair of seeds, between the
        architectures' scores under one seed and under the other (1: every seed orders the
        architectures alike; about 0: the order is the seed's). None with one seed, fewer
        than three architectures or unequal seed counts.
    """
    counts = {len(row["scores"]) for row in rows}
    if len(rows) < 3 or len(counts) != 1 or counts == {1}:
        return None
    return _mean_spearman(
        [[row["scores"][i] for row in rows] for i in range(counts.pop())]
    )


def fold_agreement(folds):
    """Whether the architectures differ consistently over folds.

    A two-way analysis of variance without replication of the folds' mean scores (over
    seeds): the architecture and the fold are the factors, their interaction is the error.
    It asks whether some architectures are better than others on every fold, beyond each
    fold's own level and beyond what changes from fold to fold.

    Arguments
    ---------
    folds : dict
        ``{fold: rows}`` (:func:`rank_architectures`); only the architectures every fold
        ranks are compared.

    Returns
    -------
    dict or None
        ``folds`` and ``architectures`` (how many are compared), ``anova_f`` and
        ``anova_p`` (F test that every architecture has the same expected score; F is
        None when the folds agree exactly up to their levels, p is then 0 or 1),
        ``architecture_share`` (architecture sum of squares over architecture plus error:
        the share of the fold-adjusted variance the architecture explains) and
        ``fold_spearman`` (mean Spearman rank correlation of the folds' orders over every
        pair of folds). None with fewer than two folds or two shared architectures.
    """
    from scipy import stats

    if len(folds) < 2:
        return None
    means = {
        fold: {row["architecture"]: row["mean"] for row in rows}
        for fold, rows in folds.items()
    }
    shared = sorted(set.intersection(*(set(m) for m in means.values())))
    if len(shared) < 2:
        return None
    table = [[means[fold][key] for fold in means] for key in shared]
    a, b = len(shared), len(means)
    grand = statistics.fmean(v for row in table for v in row)
    row_means = [statistics.fmean(row) for row in table]
    col_means = [statistics.fmean(row[j] for row in table) for j in range(b)]
    ss_arch = b * sum((m - grand) ** 2 for m in row_means)
    ss_error = sum(
        (table[i][j] - row_means[i] - col_means[j] + grand) ** 2
        for i in range(a)
        for j in range(b)
    )
    df_arch, df_error = a - 1, (a - 1) * (b - 1)
    if ss_error > 1e-15:
        f_value = (ss_arch / df_arch) / (ss_error / df_error)
        p_value = float(stats.f.sf(f_value, df_arch, df_error))
    else:  # the folds agree exactly up to their levels (F undefined; JSON has no inf)
        f_value = None
        p_value = 0.0 if ss_arch > 0 else 1.0
    total = ss_arch + ss_error
    return {
        "folds": b,
        "architectures": a,
        "anova_f": f_value,
        "anova_p": p_value,
        "architecture_share": ss_arch / total if total > 0 else 0.0,
        "fold_spearman": _mean_spearman(
            [[row[j] for row in table] for j in range(b)]
        ),
    }


def layer_effects(folds, key="scores"):
    """Which block type matters in which layer: an additive model of the scores.

    ``score = level of (fold, seed) + sum over layers of effect[layer][block] + error``,
    fitted by least squares over every architecture, seed and fold. Each layer is tested
    by the F test of dropping its block effects (a nested-model test; in a balanced
    design it is the classical factorial ANOVA's main-effect test). The interactions
    between layers are part of the error, so the test needs no repeated seeds, and its 2
    degrees of freedom per layer (3 candidates) give it far more power than the one-way
    test of 27 architectures (:func:`seed_noise`, :func:`fold_agreement`) against
    effects of one layer's block.

    Arguments
    ---------
    folds : dict
        ``{fold: rows}`` (:func:`rank_architectures`).
    key : str
        The rows' list of per-seed scores to model: ``scores`` (test) or
        ``valid_scores`` (the selected checkpoints' validation score, what a search or
        any other model choice can see). Rows without it are left out.

    Returns
    -------
    dict or None
        ``observations``, ``residual_df``, ``residual_std``, ``layers`` (one dict per
        layer, first layer first: ``layer`` (1-based), ``effects`` (``{block: effect}``,
        centred on the candidates' average: in a balanced design, the block's mean score
        minus the mean score), ``best`` (the block with the largest effect), ``f`` and
        ``p``; ``f`` is None when the model fits exactly, ``p`` is then 0 or 1),
        ``all_layers`` (``f`` and ``p`` of dropping every layer's effects) and
        ``best_architecture`` (each layer's best block). None without observations,
        with architectures of unequal depth, or without residual degrees of freedom.
    """
    import numpy as np
    from scipy import stats

    observations = []
    for fold, rows in folds.items():
        for row in rows:
            for seed, value in enumerate(row.get(key) or []):
                if value is None:
                    continue
                observations.append(
                    ((str(fold), seed), row["architecture"].split("-"), value)
                )
    depths = {len(blocks) for _, blocks, _ in observations}
    if len(depths) != 1:
        return None
    num_layers = depths.pop()
    present = {block for _, blocks, _ in observations for block in blocks}
    candidates = [c for c in CANDIDATES if c in present] + sorted(
        present - set(CANDIDATES)
    )
    levels = sorted({level for level, _, _ in observations})
    y = np.array([float(value) for _, _, value in observations])

    def design(layers):
        columns = [
            [float(level == wanted) for level, _, _ in observations]
            for wanted in levels
        ]
        for layer in layers:
            for block in candidates[1:]:
                columns.append(
                    [
                        float(blocks[layer] == block)
                        for _, blocks, _ in observations
                    ]
                )
        return np.array(columns, dtype=float).T

    def fit(matrix):
        coefficients, *_ = np.linalg.lstsq(matrix, y, rcond=None)
        residual = y - matrix @ coefficients
        return (
            float(residual @ residual),
            int(np.linalg.matrix_rank(matrix)),
            coefficients,
        )

    full = design(range(num_layers))
    rss, rank, coefficients = fit(full)
    residual_df = len(y) - rank
    if residual_df < 1:
        return None
    mse = rss / residual_df

    def f_test(dropped):
        kept = [layer for layer in range(num_layers) if layer not in dropped]
        reduced_rss, reduced_rank, _ = fit(design(kept))
        df = rank - reduced_rank
        gain = max(reduced_rss - rss, 0.0)
        if df < 1:
            return None, 1.0
        if mse <= 1e-15 * max(1.0, float(y @ y)):
            return None, (0.0 if gain > 1e-12 else 1.0)
        f_value = (gain / df) / mse
        return f_value, float(stats.f.sf(f_value, df, residual_df))

    layers = []
    for layer in range(num_layers):
        start = len(levels) + layer * (len(candidates) - 1)
        raw = [0.0] + [
            float(c) for c in coefficients[start : start + len(candidates) - 1]
        ]
        centre = statistics.fmean(raw)
        effects = {
            block: value - centre for block, value in zip(candidates, raw)
        }
        f_value, p_value = f_test([layer])
        layers.append(
            {
                "layer": layer + 1,
                "effects": effects,
                "best": max(candidates, key=lambda block: effects[block]),
                "f": f_value,
                "p": p_value,
            }
        )
    f_all, p_all = f_test(list(range(num_layers)))
    return {
        "observations": len(y),
        "residual_df": residual_df,
        "residual_std": math.sqrt(mse),
        "layers": layers,
        "all_layers": {"f": f_all, "p": p_all},
        "best_architecture": [entry["best"] for entry in layers],
    }


def layer_effects_text(effects, alpha=0.05):
    """One Markdown sentence on :func:`layer_effects` (empty string for None)."""
    if effects is None:
        return ""
    parts = []
    for entry in effects["layers"]:
        values = ", ".join(
            f"{block} {value:+.3f}" for block, value in entry["effects"].items()
        )
        parts.append(f"layer {entry['layer']}: {values} (p = {entry['p']:.2g})")
    mattering = [
        f"layer {entry['layer']} (`{entry['best']}`)"
        for entry in effects["layers"]
        if entry["p"] < alpha
    ]
    return (
        "; ".join(parts)
        + f". Residual std {effects['residual_std']:.4f} ({effects['residual_df']} df). "
        + (
            "Layers whose block matters at 5 %, with their best block: "
            + ", ".join(mattering)
            + "."
            if mattering
            else "No layer's block is shown to matter at 5 %."
        )
    )


def load_ranking(path):
    """Read a ``ranking.json`` written by :func:`write_ranking` (clear error otherwise)."""
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if not isinstance(record, dict) or "folds" not in record:
        raise ValueError(
            f"{path} is not an architecture ranking (no 'folds'): write it with "
            "recipes/<dataset>/rank_architectures.py."
        )
    return record


def derived_ranks(architectures, ranking):
    """Where each fold's derived architecture ranks in the exhaustive ranking.

    Arguments
    ---------
    architectures : dict
        ``{fold: [block, ...]}`` as the BAS search derived them.
    ranking : dict or str
        A ranking record (``load_ranking``) or the path of ``ranking.json``.

    Returns
    -------
    dict
        ``{fold: {"rank", "of", "mean", "std", "best", "best_mean", "top_third"}}`` for
        the folds the ranking covers and whose architecture it holds; other folds are left out.
    """
    if not isinstance(ranking, dict):
        ranking = load_ranking(ranking)
    ranks = {}
    for fold, architecture in architectures.items():
        rows = ranking["folds"].get(fold)
        if not rows:
            continue
        key = architecture_key(architecture)
        row = next((r for r in rows if r["architecture"] == key), None)
        if row is None:
            continue
        total = len(rows)
        top = math.ceil(total / 3)
        noise = seed_noise(rows)
        ranks[fold] = {
            "rank": row["rank"],
            "of": total,
            "mean": row["mean"],
            "std": row["std"],
            "best": rows[0]["architecture"],
            "best_mean": rows[0]["mean"],
            "top_third": row["rank"] <= top,
            # Not below the worst of the top third by more than the seeds can resolve.
            "within_noise_of_top_third": None
            if noise is None
            else row["mean"] >= rows[top - 1]["mean"] - noise["lsd"],
            # How many architectures beat it by more than the seeds can resolve.
            "significantly_better": None
            if noise is None
            else sum(1 for r in rows if r["mean"] > row["mean"] + noise["lsd"]),
        }
    return ranks


def search_ranks(architectures, ranking_path):
    """The ``results.json`` entries of a BAS run for an exhaustive ranking file.

    Returns ``{"ranking": path, "ranks": derived_ranks(...), "over_folds":
    fold_agreement(...), "layer_effects": layer_effects(...)}`` (of the test scores
    over every fold of the ranking), or ``{"ranking": path,
    "ranking_error": message}`` when the file cannot be read: a finished run still writes
    its results, and says why the ranks are missing.
    """
    try:
        ranking = load_ranking(str(ranking_path))
        return {
            "ranking": str(ranking_path),
            "ranks": derived_ranks(architectures, ranking),
            "over_folds": fold_agreement(ranking["folds"]),
            "layer_effects": layer_effects(ranking["folds"], "scores"),
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning(
            "Cannot read the architecture ranking %s: %s", ranking_path, error
        )
        return {
            "ranking": str(ranking_path),
            "ranking_error": f"{type(error).__name__}: {error}",
        }


def ranks_markdown(search):
    """Lines of ``results.md`` on where the derived architectures rank (empty without)."""
    if "ranking_error" in search:
        return [
            "",
            f"Exhaustive ranking {search['ranking']} could not be read: {search['ranking_error']}",
        ]
    ranks = search.get("ranks")
    if ranks is None:
        return []
    lines = [
        "",
        f"Where the derived architecture ranks among all architectures of the space, "
        f"trained stand-alone ({search['ranking']}):",
        "",
        "| split | derived | rank | UA of derived (mean +/- std over seeds) | best | UA of best |",
        "|---|---|---|---|---|---|",
    ]
    for fold, architecture in search["architectures"].items():
        entry = ranks.get(fold)
        if entry is None:
            lines.append(
                f"| {fold} | {' -> '.join(architecture)} | not in the ranking | | | |"
            )
            continue
        lines.append(
            f"| {fold} | {' -> '.join(architecture)} | {entry['rank']} of {entry['of']} | "
            f"{entry['mean']:.4f} +/- {entry['std']:.4f} | {entry['best'].replace('-', ' -> ')} | "
            f"{entry['best_mean']:.4f} |"
        )
    if ranks:
        top = sum(1 for entry in ranks.values() if entry["top_third"])
        lines += ["", f"In the top third: {top} of {len(ranks)} ranked splits."]
        resolved = [
            entry["within_noise_of_top_third"]
            for entry in ranks.values()
            if entry.get("within_noise_of_top_third") is not None
        ]
        if resolved:
            unbeaten = sum(
                1
                for entry in ranks.values()
                if entry.get("significantly_better") == 0
            )
            lines.append(
                f"Not significantly below the top third (Fisher's least significant "
                f"difference over the seeds, 5 %): {sum(resolved)} of {len(resolved)}; "
                f"no architecture significantly better: {unbeaten} of {len(resolved)}."
            )
    across = search.get("over_folds")
    if across:
        lines.append(
            f"Over the ranking's {across['folds']} folds, the "
            f"{across['architectures']} architectures taken one by one "
            + (
                "differ consistently"
                if across["anova_p"] < 0.05
                else "are not shown to differ consistently"
            )
            + f" (two-way ANOVA of the fold means, p = {across['anova_p']:.2g}; "
            "mean Spearman correlation of the folds' orders "
            + (
                "n/a"
                if across["fold_spearman"] is None
                else f"{across['fold_spearman']:.2f}"
            )
            + ")."
        )
    effects = search.get("layer_effects")
    if effects and len(effects["layers"]) == len(
        next(iter(search["architectures"].values()), [])
    ):
        parts = []
        for entry in effects["layers"]:
            index = entry["layer"] - 1
            chosen = sum(
                1
                for architecture in search["architectures"].values()
                if architecture[index] == entry["best"]
            )
            if entry["p"] < 0.05:
                parts.append(
                    f"layer {entry['layer']} matters (p = {entry['p']:.2g}): "
                    f"`{entry['best']}` is best ({entry['effects'][entry['best']]:+.3f} "
                    f"against the candidates' average), the search chose it on {chosen} "
                    f"of {len(search['architectures'])} splits"
                )
            else:
                parts.append(
                    f"layer {entry['layer']} is not shown to matter (p = {entry['p']:.2g})"
                )
        lines.append(
            "Per layer (additive model of the ranking's scores over its folds and seeds): "
            + "; ".join(parts)
            + "."
        )
    return lines


def _layer_lines(folds, metric):
    """Paragraphs of ``ranking.md`` on :func:`layer_effects`, test and validation."""
    lines = []
    for key, what in (
        ("scores", f"test {metric}"),
        (
            "valid_scores",
            f"validation {metric} of the selected checkpoints (what a search or any "
            "other model choice can see)",
        ),
    ):
        text = layer_effects_text(layer_effects(folds, key))
        if text:
            lines += [
                f"Per layer, additive model of the {what} over "
                f"{'the folds, seeds and' if len(folds) > 1 else 'seeds and'} "
                f"architectures (block effects centred on the candidates' average; "
                f"interactions as error): {text}",
                "",
            ]
    return lines


def ranking_markdown(record):
    """The ranking as Markdown: one table per fold, then a summary over folds."""
    metric = record.get("metric", "UA")
    lines = [
        f"# Exhaustive ranking of the {record.get('num_layers', '?')}-layer BAS space",
        "",
        f"Test {metric} of every architecture, trained stand-alone with the retraining recipe "
        f"`{record.get('hparams_file', '?')}` (overrides: `{record.get('overrides', {})}`), seeds "
        f"{record.get('seeds')}. Rank 1 = best mean; equal means share a rank.",
    ]
    for fold, rows in record["folds"].items():
        flat = flatness(rows)
        seed_std = (
            "n/a (one seed)"
            if flat["seed_std"] is None
            else f"{flat['seed_std']:.4f}"
        )
        noise = seed_noise(rows)
        resolution = (
            ""
            if noise is None
            else f" The architecture explains {100 * noise['architecture_share']:.0f} % "
            f"of the variance of the scores (one-way ANOVA over the seeds, "
            f"p = {noise['anova_p']:.2g}); means closer than {noise['lsd']:.4f} "
            "(Fisher's least significant difference, 5 %) are not told apart."
        )
        agreement = seed_agreement(rows)
        if agreement is not None:
            resolution += (
                f" The seeds' orders agree with a mean Spearman correlation of "
                f"{agreement:.2f}."
            )
        lines += [
            "",
            f"## {fold}",
            "",
            f"Best {flat['best']:.4f}, worst {flat['worst']:.4f} (range {flat['range']:.4f}); "
            f"best third minus the rest {flat['top_third_gap']:.4f}; seed std {seed_std}."
            + resolution,
            "",
            *_layer_lines({fold: rows}, metric),
            f"| rank | architecture | {metric} mean | std | per seed |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['rank']} | {row['architecture'].replace('-', ' -> ')} | {row['mean']:.4f} | "
                f"{row['std']:.4f} | {', '.join(f'{v:.4f}' for v in row['scores'])} |"
            )
    if len(record["folds"]) > 1:
        keys = sorted(
            {
                row["architecture"]
                for rows in record["folds"].values()
                for row in rows
            }
        )
        folds_of = {
            key: [
                next(r for r in rows if r["architecture"] == key)
                for rows in record["folds"].values()
                if any(r["architecture"] == key for r in rows)
            ]
            for key in keys
        }
        summary = sorted(
            (
                (
                    statistics.fmean(r["mean"] for r in found),
                    statistics.fmean(r["rank"] for r in found),
                    key,
                    len(found),
                )
                for key, found in folds_of.items()
            ),
            key=lambda item: (-item[0], item[2]),
        )
        lines += ["", "## Over folds", ""]
        across = fold_agreement(record["folds"])
        if across is not None:
            verdict = (
                "some architectures are better than others on every fold"
                if across["anova_p"] < 0.05
                else "no architecture is shown to be better than another on every fold "
                "(taken one by one, at the resolution of these folds; the per-layer model "
                "below can still find a block that matters)"
            )
            lines += [
                f"Over {across['folds']} folds the architecture explains "
                f"{100 * across['architecture_share']:.0f} % of the variance left after "
                f"each fold's own level (two-way ANOVA of the fold means, "
                + (
                    ""
                    if across["anova_f"] is None
                    else f"F = {across['anova_f']:.2f}, "
                )
                + f"p = {across['anova_p']:.2g}): at 5 %, "
                f"{verdict}. The folds' orders agree with a mean Spearman correlation of "
                + (
                    "n/a"
                    if across["fold_spearman"] is None
                    else f"{across['fold_spearman']:.2f}"
                )
                + ".",
                "",
            ]
        lines += _layer_lines(record["folds"], metric)
        lines += [
            f"| architecture | mean {metric} over folds | mean rank | folds |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {key.replace('-', ' -> ')} | {mean:.4f} | {rank:.1f} | {count} |"
            for mean, rank, key, count in summary
        ]
    return "\n".join(lines) + "\n"


def over_folds_record(folds):
    """The fold rankings and their statistics as ``ranking.json`` stores them: ``folds``,
    ``over_folds`` (:func:`fold_agreement`) and ``layer_effects`` (test and valid)."""
    return {
        "folds": folds,
        "over_folds": fold_agreement(folds),
        "layer_effects": {
            "test": layer_effects(folds, "scores"),
            "valid": layer_effects(folds, "valid_scores"),
        },
    }


def selected_valid_score(outcome, experiment_folder, metric):
    """The validation ``metric`` of the checkpoint a fold run selected, or None.

    From the outcome's ``selected_score``; outcomes written before it existed fall back
    to the best checkpoint's metadata in ``<experiment_folder>/save`` (the score that
    selected it). None when the checkpoint was selected on the test set (paper protocol)
    or no checkpoint is left.
    """
    if outcome.get("selection", {}).get("set", "valid") != "valid":
        return None
    if outcome.get("selected_score") is not None:
        return float(outcome["selected_score"])
    save = os.path.join(experiment_folder, "save")
    if not os.path.isdir(save):
        return None
    from speechbrain.utils.checkpoints import Checkpointer

    best = Checkpointer(save).find_checkpoint(max_key=metric)
    if best is None or metric not in best.meta:
        return None
    return float(best.meta[metric])


def _stored_outcome(output_folder, architecture, seed, fold):
    """``(folder, test outcome)`` of one stored ranking run, or None."""
    folder = os.path.join(
        output_folder, "runs", architecture, f"seed{seed}", fold
    )
    try:
        with open(
            os.path.join(folder, "test_outcome.json"), encoding="utf-8"
        ) as handle:
            return folder, json.load(handle)
    except (OSError, ValueError):
        return None


def _fold_seed_order(output_folder, fold, rows, metric):
    """The seeds behind a fold's per-seed scores, in the rows' order, or None.

    Rows written before they recorded their seeds are matched to the stored runs
    (``runs/<architecture>/seed<k>/<fold>``) by their test scores: the one order of the
    fold's seeds under which every row's scores are its runs' scores. None when no order,
    or more than one, fits.
    """
    length = len(rows[0]["scores"])
    if any(len(row["scores"]) != length for row in rows):
        return None
    parent = os.path.join(output_folder, "runs", rows[0]["architecture"])
    seeds = sorted(
        int(name[4:])
        for name in (os.listdir(parent) if os.path.isdir(parent) else [])
        if name.startswith("seed") and name[4:].isdigit()
    )
    stored = {}  # (architecture, seed) -> the run's test score, or None; read once
    for row in rows:
        for seed in seeds:
            found = _stored_outcome(
                output_folder, row["architecture"], seed, fold
            )
            stored[row["architecture"], seed] = (
                None if found is None else float(found[1]["scores"][metric])
            )
    fitting = [
        list(order)
        for order in itertools.permutations(seeds, length)
        if all(
            stored[row["architecture"], seed] is not None
            and abs(stored[row["architecture"], seed] - score) <= 1e-12
            for row in rows
            for seed, score in zip(order, row["scores"])
        )
    ]
    return fitting[0] if len(fitting) == 1 else None


def refresh_ranking(output_folder):
    """Rewrite ``ranking.json`` / ``ranking.md`` of a ranking folder from its stored results.

    Nothing is trained: the folds' rankings (``folds/*.json``) are read again, folds
    written before the validation scores were recorded get them from their runs
    (:func:`selected_valid_score`; the runs are matched to the scores by
    :func:`_fold_seed_order`), and the statistics over folds are recomputed with
    this version of the code. Returns the path of ``ranking.json``.
    """
    record = load_ranking(os.path.join(output_folder, RANKING_FILE))
    folds = collect_fold_rankings(output_folder)
    metric = record.get("metric", "UA")
    for fold, rows in folds.items():
        if rows and not all(row.get("valid_scores") for row in rows):
            recorded = {tuple(row.get("seeds") or ()) for row in rows}
            order = (
                list(recorded.pop())
                if len(recorded) == 1 and () not in recorded
                else _fold_seed_order(output_folder, fold, rows, metric)
            )
            for row in rows if order is not None else []:
                row["seeds"] = list(order)
                row["valid_scores"] = [
                    selected_valid_score(stored[1], stored[0], metric)
                    for stored in (
                        _stored_outcome(
                            output_folder, row["architecture"], seed, fold
                        )
                        for seed in order
                    )
                ]
        atomic_write_text(
            os.path.join(output_folder, "folds", f"{fold}.json"),
            json.dumps(rows, indent=2) + "\n",
        )
    record.update(over_folds_record(folds))
    return write_ranking(output_folder, record)


def collect_fold_rankings(output_folder):
    """``{fold: rows}`` from ``<output_folder>/folds/<fold>.json``, folds in natural order."""
    folder = os.path.join(output_folder, "folds")
    names = (
        [name[:-5] for name in os.listdir(folder) if name.endswith(".json")]
        if os.path.isdir(folder)
        else []
    )
    folds = {}
    for name in sorted(names, key=lambda n: (len(n), n)):
        with open(
            os.path.join(folder, name + ".json"), encoding="utf-8"
        ) as handle:
            folds[name] = json.load(handle)
    return folds


def write_ranking(output_folder, record):
    """Write ``ranking.json`` and ``ranking.md`` atomically; returns the JSON path."""
    path = os.path.join(output_folder, RANKING_FILE)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    atomic_write_text(
        os.path.join(output_folder, RANKING_MARKDOWN), ranking_markdown(record)
    )
    return path


def parse_seeds(text):
    """``"1986,1987"`` -> ``[1986, 1987]``."""
    seeds = [int(part) for part in str(text).split(",") if part.strip()]
    if not seeds:
        raise ValueError(
            f"--rank_seeds needs at least one integer seed, got {text!r}."
        )
    return seeds


def run_ranking(argv, prepare_function, default_groups, dataset_name, run_fold):
    """Train every architecture of the space on the selected folds and seeds; write the ranking.

    Arguments
    ---------
    argv : list of str
        The recipe's command line, plus ``--rank_layers`` (default: the YAML's
        ``search_layers``) and ``--rank_seeds`` (default: the YAML's ``seed``).
    prepare_function : callable
        The dataset's ``prepare_<dataset>``.
    default_groups : sequence of dict
        The recipe's default groups, exactly as its ``train.py`` passes them to
        :func:`ser_modules.recipe.recipe_overrides` (dataset defaults, and for custom
        corpora the small-corpus defaults), so each architecture trains as the BAS run
        retrains its derived one.
    dataset_name : str
        Name written in the ranking.
    run_fold : callable
        The recipe's ``run_fold`` (``recipes/<DATASET>/train.py``): each architecture is
        trained exactly as the BAS run retrains its derived one.

    Returns
    -------
    dict
        The ranking record (also in ``<output_folder>/ranking.json``).
    """

    from ser_modules import recipe
    from ser_modules.run_identity import (
        RESULTS_FORMAT,
        model_record,
        preparation_options,
        protocol_record,
        run_identity,
        upstream_record,
    )

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--rank_layers", type=int, default=None)
    parser.add_argument("--rank_seeds", default=None)
    own, argv = parser.parse_known_args(argv)
    prepare_kwargs, argv = recipe.split_preparation_arguments(
        argv, prepare_function
    )
    hparams_file, run_opts, cli_overrides = recipe.parse_arguments(argv)
    yaml_text, overrides = recipe.recipe_overrides(
        hparams_file, cli_overrides, dataset_name, *default_groups
    )
    setup = recipe.load_hparams(yaml_text, {**overrides, "split_name": "setup"})
    output_folder = setup["output_folder"]
    num_layers = own.rank_layers or int(
        setup.get("search_layers", setup.get("num_layers", 3))
    )
    seeds = (
        parse_seeds(own.rank_seeds) if own.rank_seeds else [int(setup["seed"])]
    )
    os.makedirs(output_folder, exist_ok=True)
    splits = recipe.fold_manifests(
        prepare_function,
        prepare_kwargs,
        data_folder=setup["data_folder"],
        prepare_folder=setup["prepare_folder"],
        skip_prep=setup["skip_prep"],
        given={
            "train": setup.get("train_csv"),
            "valid": setup.get("valid_csv"),
            "test": setup.get("test_csv"),
        },
    )
    split_names = recipe.selected_splits(splits, setup["fold"])
    upstream = recipe.frozen_upstream(
        setup["upstream"], setup.get("ssl_source")
    )
    run = recipe.RunContext.start(
        dataset_name,
        yaml_text,
        prepare_kwargs,
        splits,
        upstream,
        output_folder=output_folder,
        data_folder=setup["data_folder"],
        prepare_folder=setup["prepare_folder"],
    )
    if setup["use_cache"]:
        run.caches = setup["feature_cache"](
            upstream,
            [splits[name] for name in split_names],
            run.replacements,
            device=run_opts.get("device"),
        )
    metric = setup["selection_metric"]
    # The space the BAS run searches: the candidates of the YAML's super net.
    candidates = (
        list(setup["supernet"].candidates)
        if "supernet" in setup
        else list(CANDIDATES)
    )
    # What the ranking was (ser_modules.run_identity): the block stacks of the space.
    identity = run_identity(
        dataset_name,
        setup,
        hparams_file,
        yaml_text,
        overrides,
        protocol_record(
            setup,
            preparation_options(prepare_function, prepare_kwargs),
            {name: splits[name] for name in split_names},
        ),
        model_record(
            {
                **setup,
                "downstream_model": "blocks",
                "search": False,
                "architecture": None,
            }
        ),
        upstream_record(upstream),
    )
    del setup

    architectures = all_architectures(num_layers, candidates)
    record = {
        "results_format": RESULTS_FORMAT,
        "identity": identity,
        "dataset": dataset_name,
        "hparams_file": os.path.basename(hparams_file),
        "metric": metric,
        "num_layers": num_layers,
        "seeds": seeds,
        "candidates": candidates,
        "overrides": {
            k: v
            for k, v in overrides.items()
            if k not in ("output_folder", "cache_folder")
        },
    }
    for split_name in split_names:
        scores, valid_scores = {}, {}
        for seed in seeds:
            for architecture in architectures:
                key = architecture_key(architecture)
                folder = os.path.join(
                    output_folder, "runs", key, f"seed{seed}", split_name
                )
                run_overrides = {
                    **run.fold_overrides(overrides, split_name),
                    "seed": seed,
                    "search": False,
                    "downstream_model": "blocks",
                    "architecture": architecture,
                    "num_layers": num_layers,
                    "experiment_folder": folder,
                }
                outcome = run_fold(
                    yaml_text,
                    run_overrides,
                    run_opts,
                    splits[split_name],
                    run,
                )
                score = float(outcome["scores"][metric])
                scores.setdefault(key, []).append(score)
                valid_scores.setdefault(key, []).append(
                    selected_valid_score(outcome, folder, metric)
                )
                logger.info(
                    "%s seed %d %s: %s %.4f",
                    split_name,
                    seed,
                    key,
                    metric,
                    score,
                )
        fold_path = os.path.join(output_folder, "folds", f"{split_name}.json")
        os.makedirs(os.path.dirname(fold_path), exist_ok=True)
        rows = rank_architectures(scores)
        for row in rows:
            row["seeds"] = list(seeds)
            row["valid_scores"] = valid_scores[row["architecture"]]
        atomic_write_text(fold_path, json.dumps(rows, indent=2) + "\n")
        # The ranking holds every fold ranked so far in this folder, also those of other
        # processes ranking other folds (--fold=k) into the same output folder.
        record.update(over_folds_record(collect_fold_rankings(output_folder)))
        path = write_ranking(output_folder, record)
        print(
            f"{split_name}: ranked {len(scores)} architectures -> {path}",
            flush=True,
        )
    print(ranking_markdown(record))
    return record


def main(prepare_function, default_groups, dataset_name, run_fold):
    """Entry point of ``recipes/<DATASET>/rank_architectures.py``."""
    logging.basicConfig(level=logging.INFO)
    run_ranking(
        sys.argv[1:], prepare_function, default_groups, dataset_name, run_fold
    )


if __name__ == "__main__":
    # python -m ser_modules.architecture_ranking OUTPUT_FOLDER: refresh_ranking
    if len(sys.argv) != 2:
        sys.exit(
            "usage: python -m ser_modules.architecture_ranking RANKING_FOLDER "
            "(rewrites its ranking.json / ranking.md from the stored results)"
        )
    print(refresh_ranking(sys.argv[1]))
