"""How reachable is "the top third of the ranking" at the ranking's own seed noise?

An exhaustive ranking (:mod:`ser_modules.architecture_ranking`) orders the architectures by
their mean score over a few training seeds. Whether a given architecture lands in a fold's
top third then depends on those seeds as well as on the architecture. This module asks
what an *oracle* would get: a choice that knew each architecture's true mean score and took
the best. The true means are estimated by the per-layer additive model (one level per block
and layer, as :func:`~ser_modules.architecture_ranking.layer_effects` tests it), fitted to
the fold means averaged over the folds (``per_fold=False``, the effects every fold shares)
or to each fold's own means (``per_fold=True``, which also fits some of the fold's noise,
so it flatters the oracle). The noise of one training seed is the residual standard
deviation of the two-way (architecture + seed) model of the fold's scores. The oracle's
rank is then drawn: ranking means = true means + the noise of ``S`` seeds averaged.

Run it on a ranking folder's ``ranking.json``::

    python -m ser_modules.ranking_oracle OUT/ranking.json [--per_fold] [--min_folds=3]
"""

import argparse
import math
import sys

import numpy as np
from scipy import stats

from ser_modules.architecture_ranking import layer_effects, load_ranking


def seed_noise_std(rows):
    """Standard deviation of one seed's score around its architecture's mean.

    The residual of the two-way model ``score = architecture level + seed level``, on
    ``(A - 1)(S - 1)`` degrees of freedom (a seed that is better on every architecture is
    not noise between architectures). None with fewer than two seeds.
    """
    scores = np.array([row["scores"] for row in rows], dtype=float)
    architectures, seeds = scores.shape
    if seeds < 2:
        return None
    residual = (
        scores
        - scores.mean(axis=1, keepdims=True)
        - scores.mean(axis=0, keepdims=True)
        + scores.mean()
    )
    dof = (architectures - 1) * (seeds - 1)
    return float(math.sqrt(float((residual**2).sum()) / dof))


def additive_means(keys, means):
    """Fitted values of the per-layer additive model of ``means`` (one per key).

    ``keys`` are the architecture keys of a whole search space (``"ffn-msa-msa_ffn"``,
    every combination once, as a ranking trains them). The model is
    :func:`~ser_modules.architecture_ranking.layer_effects`'s; in this balanced design its
    fitted value is the grand mean plus each layer's centred block effect.
    """
    fitted = layer_effects(
        {
            "fit": [
                {"architecture": key, "scores": [float(value)]}
                for key, value in zip(keys, means)
            ]
        }
    )
    if fitted is None:
        # No residual degree of freedom (one layer): the model is the means themselves.
        return np.asarray(means, dtype=float)
    effects = fitted["layers"]
    grand = float(np.mean(means))
    return np.array(
        [
            grand
            + sum(
                effects[layer]["effects"][block]
                for layer, block in enumerate(key.split("-"))
            )
            for key in keys
        ]
    )


def binomial_at_least(trials, probability, at_least):
    """P(X >= at_least) for X ~ Binomial(trials, probability)."""
    return float(stats.binom.sf(at_least - 1, trials, probability))


def oracle_top_third(
    folds,
    draws=20000,
    seed=0,
    min_folds=3,
    per_fold=False,
    architecture=None,
    permutations=20,
):
    """How often the best architecture by its true mean lands in the ranking's top third.

    Arguments
    ---------
    folds : dict
        ``{fold: rows}`` of a ranking (rows with ``architecture`` and ``scores``, one score
        per seed). Folds ranked with one seed (no noise estimate) are left out.
    draws : int
        Simulated rankings per fold.
    seed : int
        Seed of the simulation.
    min_folds : int
        The criterion: in the top third on at least this many folds.
    per_fold : bool
        True means from each fold's own additive fit instead of the fit shared by the folds.
    architecture : str or None
        An architecture key to follow instead of the oracle's choice (e.g. what a search
        derived), under the same true means and noise.
    permutations : int
        Rankings with the architectures' scores shuffled within each fold (no block effect
        left) on which the oracle is estimated again (``draws // 10`` draws each): the
        estimate's own bias, since the fitted means also fit noise. 0: not computed.

    Returns
    -------
    dict
        ``folds``: ``{fold: {"oracle", "noise", "seeds", "p_top_third"}}``;
        ``p_at_least``: the probability of the criterion for the oracle; ``random``: the
        same for an architecture drawn at random; ``null``: the oracle's mean
        ``p_at_least`` on the shuffled rankings (None without permutations);
        ``min_folds``; ``left_out`` (folds with one seed).
    """
    rng = np.random.default_rng(seed)
    usable = {
        fold: rows
        for fold, rows in folds.items()
        if rows and len(rows[0]["scores"]) >= 2
    }
    left_out = sorted(set(folds) - set(usable))
    if not usable:
        raise ValueError(
            "No fold of the ranking has two seeds or more: the seed noise cannot be "
            "estimated. Rank with --rank_seeds=S1,S2."
        )
    keys = sorted(row["architecture"] for row in next(iter(usable.values())))
    for fold, rows in usable.items():
        if sorted(row["architecture"] for row in rows) != keys:
            raise ValueError(
                f"{fold} does not rank the same architectures as the other folds."
            )
    fold_means = {}
    for fold, rows in usable.items():
        scores = {row["architecture"]: row["scores"] for row in rows}
        fold_means[fold] = np.array([np.mean(scores[key]) for key in keys])
    shared = additive_means(
        keys, np.mean([m - m.mean() for m in fold_means.values()], axis=0)
    )
    if architecture is not None and architecture not in keys:
        raise ValueError(
            f"Architecture {architecture!r} is not in the ranking (keys like {keys[0]!r})."
        )
    top = math.ceil(len(keys) / 3)
    results, hits = {}, []
    for fold, rows in usable.items():
        truth = additive_means(keys, fold_means[fold]) if per_fold else shared
        oracle = (
            int(np.argmax(truth))
            if architecture is None
            else keys.index(architecture)
        )
        noise = seed_noise_std(rows)
        seeds = len(rows[0]["scores"])
        observed = truth[None, :] + rng.normal(
            0.0, noise / math.sqrt(seeds), (draws, len(keys))
        )
        ranks = 1 + (observed > observed[:, [oracle]]).sum(axis=1)
        in_top = ranks <= top
        hits.append(in_top)
        results[fold] = {
            "oracle": keys[oracle],
            "noise": noise,
            "seeds": seeds,
            "p_top_third": float(in_top.mean()),
        }
    count = np.sum(hits, axis=0)
    null = None
    if permutations and architecture is None:
        shuffled_runs = []
        for index in range(int(permutations)):
            shuffled = {}
            for fold, rows in usable.items():
                order = rng.permutation(len(rows))
                shuffled[fold] = [
                    {
                        "architecture": row["architecture"],
                        "scores": rows[k]["scores"],
                    }
                    for row, k in zip(rows, order)
                ]
            shuffled_runs.append(
                oracle_top_third(
                    shuffled,
                    draws=max(1, draws // 10),
                    seed=seed + 1 + index,
                    min_folds=min_folds,
                    per_fold=per_fold,
                    permutations=0,
                )["p_at_least"]
            )
        null = float(np.mean(shuffled_runs))
    return {
        "folds": results,
        "p_at_least": float((count >= min_folds).mean()),
        "random": binomial_at_least(len(usable), top / len(keys), min_folds),
        "null": null,
        "min_folds": int(min_folds),
        "left_out": left_out,
        "architecture": architecture,
    }


def oracle_text(result, per_fold=False):
    """The result of :func:`oracle_top_third` as lines of text."""
    model = "each fold's own" if per_fold else "the folds' shared"
    lines = [
        f"True means: {model} per-layer additive model; noise: residual std of one seed."
    ]
    chosen = "oracle" if result.get("architecture") is None else "architecture"
    for fold, entry in result["folds"].items():
        lines.append(
            f"{fold}: {chosen} `{entry['oracle']}`, seed noise {entry['noise']:.3f} "
            f"({entry['seeds']} seeds), P(top third) {entry['p_top_third']:.2f}"
        )
    folds = len(result["folds"])
    lines.append(
        f"P(top third on >= {result['min_folds']} of {folds} folds): {chosen} "
        f"{result['p_at_least']:.2f}, an architecture drawn at random {result['random']:.2f}"
        + (
            ""
            if result.get("null") is None
            else f", the oracle on rankings shuffled within each fold {result['null']:.2f} "
            "(the estimate's bias: the fitted means also fit noise)"
        )
    )
    if result["left_out"]:
        lines.append("Left out (one seed): " + ", ".join(result["left_out"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ranking", help="a ranking folder's ranking.json")
    parser.add_argument("--per_fold", action="store_true")
    parser.add_argument("--min_folds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument(
        "--architecture",
        default=None,
        help="follow this architecture (e.g. msa_ffn-msa_ffn-msa_ffn) instead of the oracle's",
    )
    args = parser.parse_args(argv)
    record = load_ranking(args.ranking)
    result = oracle_top_third(
        record["folds"],
        draws=args.draws,
        min_folds=args.min_folds,
        per_fold=args.per_fold,
        architecture=args.architecture,
    )
    print(oracle_text(result, per_fold=args.per_fold))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
