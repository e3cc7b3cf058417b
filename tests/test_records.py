"""The committed records (``records/``) are the tools' unedited output.

Every ranking record is recomputed from its stored per-seed scores: the fold rankings
(order, ranks, means), the statistics over folds and the Markdown must be what
``ser_modules.architecture_ranking`` writes from them, so a hand-edited number, a fold
file that disagrees with ``ranking.json`` or a record left behind by a change of the
statistics fails here (refresh it with ``python -m ser_modules.architecture_ranking``).
"""

import glob
import math
import os

import pytest
from prepare_helpers import REPO_ROOT

from ser_modules.architecture_ranking import (
    collect_fold_rankings,
    load_ranking,
    over_folds_record,
    rank_architectures,
    ranking_markdown,
)

RANKINGS = sorted(
    glob.glob(os.path.join(REPO_ROOT, "records", "*", "ranking.json"))
)


def same(a, b):
    """Equal, NaN included (json keeps NaN; NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def test_there_is_a_ranking_record():
    assert RANKINGS, (
        "records/*/ranking.json: the README's Urdu ranking is missing"
    )


@pytest.mark.parametrize(
    "path",
    RANKINGS,
    ids=[os.path.basename(os.path.dirname(p)) for p in RANKINGS],
)
def test_a_ranking_record_is_what_the_ranking_tool_writes_from_its_scores(path):
    record = load_ranking(path)
    folder = os.path.dirname(path)
    folds = collect_fold_rankings(folder)
    assert folds and same(folds, record["folds"])
    for fold, rows in folds.items():
        seeds = {tuple(row["seeds"]) for row in rows}
        assert len(seeds) == 1, f"{fold}: architectures ranked with other seeds"
        assert len(rows) == len(record["candidates"]) ** record["num_layers"]
        assert all(len(row["scores"]) == len(row["seeds"]) for row in rows)
        assert all(
            len(row["valid_scores"]) == len(row["seeds"]) for row in rows
        )
        ranked = rank_architectures(
            {row["architecture"]: row["scores"] for row in rows}
        )
        for row, again in zip(rows, ranked):
            assert same({**row, **again}, row), f"{fold}: {row['architecture']}"
    statistics = over_folds_record(folds)
    assert same(statistics, {k: record[k] for k in statistics})
    with open(os.path.join(folder, "ranking.md"), encoding="utf-8") as handle:
        assert handle.read() == ranking_markdown(record)
