"""Layer-by-layer refinement of a BAS architecture by nested cross-validation.

The candidate set and the per-layer choice against hand-made scores; end to end on a mini
corpus: ``refine_architecture.py`` writes the inner folds of one outer fold (no test clip
in them), trains the base and its one-layer alternatives with ``train.py`` on every inner
fold, scores each by the pooled balanced accuracy of its inner runs (checked with
scikit-learn on their predictions), chooses per layer, and reuses finished runs.
"""

import json
import os
import subprocess
import sys

import pytest
from prepare_helpers import REPO_ROOT
from recipe_helpers import CHILD_ENV
from sklearn.metrics import balanced_accuracy_score

from ser_modules.architecture_ranking import architecture_key
from ser_modules.downstream.blocks import CANDIDATES
from ser_modules.layer_refinement import (
    choose_layers,
    final_choice,
    one_layer_alternatives,
    pooled_score,
    refinement_markdown,
)
from ser_modules.manifest import read_csv
from ser_modules.mini_corpus import generate_mini_corpus

SCRIPT = os.path.join(REPO_ROOT, "recipes", "custom", "refine_architecture.py")


def test_the_candidates_are_the_base_and_every_one_layer_change():
    base = ["msa_ffn", "msa", "ffn"]
    architectures = one_layer_alternatives(base)
    assert architectures[0] == base
    assert len(architectures) == 1 + 3 * (len(CANDIDATES) - 1) == 7
    assert len({architecture_key(a) for a in architectures}) == 7
    changed = [
        [layer for layer in range(3) if a[layer] != base[layer]]
        for a in architectures[1:]
    ]
    assert all(len(layers) == 1 for layers in changed)
    # every other block in every layer
    assert sorted(
        (c[0], a[c[0]]) for a, c in zip(architectures[1:], changed)
    ) == sorted(
        (layer, block)
        for layer in range(3)
        for block in CANDIDATES
        if block != base[layer]
    )
    with pytest.raises(ValueError, match="conv"):
        one_layer_alternatives(["msa", "conv"])
    with pytest.raises(ValueError, match="non-empty"):
        one_layer_alternatives([])


def planted_scores(base, effects):
    """Scores of the base and its alternatives: base 0.6 + the changed layer's effect."""
    scores = {}
    for architecture in one_layer_alternatives(base):
        changed = [
            i for i, block in enumerate(architecture) if block != base[i]
        ]
        score = 0.6
        for layer in changed:
            score += effects[layer][architecture[layer]]
        scores[architecture_key(architecture)] = score
    return scores


def test_each_layer_takes_its_best_block_and_a_tie_keeps_the_base():
    base = ["msa_ffn", "msa_ffn", "msa_ffn"]
    effects = [
        {"ffn": 0.09, "msa": 0.02},  # layer 1: ffn is better
        {"ffn": -0.05, "msa": -0.01},  # layer 2: the base's block is best
        {"ffn": 0.0, "msa": 0.0},  # layer 3: a tie
    ]
    record = choose_layers(base, planted_scores(base, effects))
    assert record["architecture"] == ["ffn", "msa_ffn", "msa_ffn"]
    assert record["base_score"] == pytest.approx(0.6)
    first, second, third = record["layers"]
    assert first["chosen"] == "ffn" and first["gain"] == pytest.approx(0.09)
    assert first["scores"] == pytest.approx(
        {"msa_ffn": 0.6, "ffn": 0.69, "msa": 0.62}
    )
    assert second["chosen"] == "msa_ffn" and second["gain"] == 0.0
    assert third["chosen"] == "msa_ffn"  # a tie keeps the base's block
    # a different base: the choice moves with the scores, not with the block names
    base = ["ffn", "msa", "ffn"]
    effects = [
        {"msa_ffn": 0.03, "msa": -0.2},
        {"msa_ffn": 0.0, "ffn": 0.01},
        {"msa_ffn": -0.01, "msa": 0.04},
    ]
    record = choose_layers(base, planted_scores(base, effects))
    assert record["architecture"] == ["msa_ffn", "ffn", "msa"]
    text = refinement_markdown(
        {
            **record,
            "fold": "fold2",
            "seed": 7,
            "metric": "UA",
            "n_inner_folds": 4,
            "inner_seed": 1234,
            "candidates": list(CANDIDATES),
            "scores": planted_scores(base, effects),
        }
    )
    assert (
        "`msa_ffn-ffn-msa`" in text and "not trained on the inner folds" in text
    )
    with pytest.raises(ValueError, match="no score for"):
        choose_layers(base, {architecture_key(base): 0.5})


def test_the_combined_choice_is_kept_only_when_it_is_at_least_the_best_candidate():
    base = ["msa_ffn", "msa_ffn"]
    effects = [{"ffn": 0.05, "msa": 0.0}, {"ffn": 0.0, "msa": 0.08}]
    scores = planted_scores(base, effects)
    record = choose_layers(base, scores)
    assert record["architecture"] == ["ffn", "msa"]  # two layers changed
    # not scored (--check_combination=False): the per-layer choice stands
    unscored = final_choice(record, scores)
    assert unscored["architecture"] == ["ffn", "msa"]
    assert unscored["combined_score"] is None
    # additive: 0.6 + 0.05 + 0.08 beats every candidate, so it is kept
    additive = final_choice(record, {**scores, "ffn-msa": 0.73})
    assert additive["architecture"] == ["ffn", "msa"]
    assert additive["combined_score"] == 0.73
    # equal to the best candidate: kept
    assert final_choice(record, {**scores, "ffn-msa": 0.68})[
        "architecture"
    ] == [
        "ffn",
        "msa",
    ]
    # below the best candidate (msa_ffn-msa, 0.68): that candidate is the answer
    clash = final_choice(record, {**scores, "ffn-msa": 0.61})
    assert clash["architecture"] == ["msa_ffn", "msa"]
    assert clash["combined"] == ["ffn", "msa"]
    text = refinement_markdown(
        {
            **clash,
            "fold": "fold1",
            "seed": 1986,
            "metric": "UA",
            "n_inner_folds": 4,
            "inner_seed": 1234,
            "candidates": list(CANDIDATES),
            "scores": {**scores, "ffn-msa": 0.61},
        }
    )
    assert "`ffn-msa`, scored 0.6100, below the best candidate" in text
    assert "Refined architecture: `msa_ffn-msa` (pooled UA 0.6800)" in text


def test_a_run_without_every_inner_fold_is_refused(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(FileNotFoundError, match="did not finish"):
        pooled_score(str(path), "UA", 2)
    path.write_text(
        json.dumps({"folds": {"fold1": {"UA": 0.5}}, "pooled": {"UA": 0.5}})
    )
    with pytest.raises(ValueError, match="do not pass --fold"):
        pooled_score(str(path), "UA", 2)
    path.write_text(
        json.dumps(
            {
                "folds": {"fold1": {"UA": 0.5}, "fold2": {"UA": 0.7}},
                "pooled": {"UA": 0.625},
            }
        )
    )
    assert pooled_score(str(path), "UA", 2) == 0.625


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A 6-speaker mini corpus in 3 speaker folds: 4 non-test speakers per fold."""
    root = tmp_path_factory.mktemp("refine")
    corpus = root / "corpus"
    generate_mini_corpus(
        str(corpus),
        num_speakers=6,
        utterances_per_class=2,
        duration_range=(0.8, 1.2),
    )
    prep = root / "prep"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "recipes", "custom", "custom_prepare.py"),
            f"--data_folder={corpus}",
            f"--save_folder={prep}",
            "--labels_csv=labels.csv",
            "--n_folds=3",
        ],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return corpus, prep


def refine(corpus, prep, output, *extra):
    return subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "hparams/bas_fbank.yaml",
            f"--data_folder={corpus}",
            f"--prepare_folder={prep}",
            "--fold=2",
            f"--output_folder={output}",
            "--n_inner_folds=2",
            "--num_layers=1",
            f"--cache_folder={output}/../cache",
            "--number_of_epochs=2",
            "--ffn_dim=16",
            "--batch_size=4",
            "--device=cpu",
            "--noprogressbar",
            *extra,
        ],
        cwd=REPO_ROOT,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
    )


def test_refinement_trains_the_candidates_on_the_inner_folds_and_chooses(
    prepared, tmp_path
):
    corpus, prep = prepared
    output = tmp_path / "refine"
    result = refine(corpus, prep, output, "--architecture=[msa]", "--jobs=2")
    assert result.returncode == 0, result.stdout + result.stderr
    with open(output / "refinement.json", encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["base"] == ["msa"] and record["fold"] == "fold2"
    assert sorted(record["scores"]) == sorted(CANDIDATES)

    # The inner folds hold the outer fold's training + validation clips, never its test.
    test_ids = {row["ID"] for row in read_csv(str(prep / "fold2" / "test.csv"))}
    non_test = {
        row["ID"]
        for split in ("train", "valid")
        for row in read_csv(str(prep / "fold2" / f"{split}.csv"))
    }
    held_out = []
    for inner in ("fold1", "fold2"):
        for split in ("train", "valid", "test"):
            ids = {
                row["ID"]
                for row in read_csv(
                    str(output / "inner" / inner / f"{split}.csv")
                )
            }
            assert not ids & test_ids
        held_out += [
            row["ID"]
            for row in read_csv(str(output / "inner" / inner / "test.csv"))
        ]
    assert sorted(held_out) == sorted(non_test)

    # Each candidate's score is the balanced accuracy of its pooled inner predictions.
    for block in CANDIDATES:
        run = output / "runs" / block / "seed1986"
        targets, predictions = [], []
        for inner in ("fold1", "fold2"):
            with open(
                run / inner / "test_outcome.json", encoding="utf-8"
            ) as handle:
                outcome = json.load(handle)
            targets += outcome["targets"]
            predictions += outcome["predictions"]
        assert len(targets) == len(non_test)
        assert record["scores"][block] == pytest.approx(
            balanced_accuracy_score(targets, predictions)
        )
    best = max(record["scores"].values())
    chosen = record["layers"][0]["chosen"]
    assert record["scores"][chosen] == best
    assert chosen == "msa" or record["scores"]["msa"] < best
    assert record["architecture"] == [chosen]
    assert f"--architecture=[{chosen}]" in result.stdout

    # Run again, the base now read from a BAS run's results.json: every candidate is
    # reused (no checkpoint is written again).
    bas = tmp_path / "bas_results.json"
    bas.write_text(
        json.dumps({"search": {"architectures": {"fold2": ["msa"]}}})
    )
    checkpoints = {
        path: os.path.getmtime(path)
        for path in (output / "runs").rglob("*.ckpt")
    }
    assert checkpoints
    again = refine(corpus, prep, output, f"--bas_results={bas}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {
        path: os.path.getmtime(path)
        for path in (output / "runs").rglob("*.ckpt")
    } == checkpoints
    with open(output / "refinement.json", encoding="utf-8") as handle:
        assert json.load(handle)["scores"] == record["scores"]


def test_bad_refinement_commands_say_what_to_do(prepared, tmp_path):
    corpus, prep = prepared
    output = tmp_path / "refine"
    result = refine(corpus, prep, output)
    assert result.returncode != 0 and "exactly one of" in result.stderr
    result = refine(
        corpus, prep, output, "--architecture=[msa]", "--search=True"
    )
    assert result.returncode != 0 and "--search is set by the refinement" in (
        result.stderr
    )
    bas = tmp_path / "results.json"
    bas.write_text(
        json.dumps({"search": {"architectures": {"fold1": ["ffn"]}}})
    )
    result = refine(corpus, prep, output, f"--bas_results={bas}")
    assert result.returncode != 0
    assert "no architecture derived on fold2" in result.stderr
    assert not (output / "runs").exists()
    result = refine(
        corpus, prep, output, "--architecture=[msa]", "--check_combination=no"
    )
    assert result.returncode != 0 and "is not True or False" in result.stderr
    # a fold the preparation does not have: refused, and nothing is recorded that
    # would refuse the corrected command
    result = refine(corpus, prep, output, "--architecture=[msa]", "--fold=9")
    assert (
        result.returncode != 0
        and "fold9/train.csv does not exist" in result.stderr
    )
    assert not (output / "inner" / "inner_options.json").exists()
    # inner folds made from other options are never trained on
    (output / "inner").mkdir(parents=True, exist_ok=True)
    (output / "inner" / "inner_options.json").write_text(
        json.dumps(
            {
                "prepare_folder": str(prep),
                "fold": "fold2",
                "n_folds": 4,
                "seed": 1234,
            }
        )
    )
    result = refine(corpus, prep, output, "--architecture=[msa]")
    assert result.returncode != 0
    assert "n_folds: 4 there, 2 now" in result.stderr
    assert "pass a new --output_folder" in result.stderr
    assert not (output / "runs").exists()


FAKE_TRAIN = """
import json, os, sys
options = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--"))
key = options["architecture"].strip("[]").replace(",", "-")
scores = json.loads(os.environ["PLANTED_SCORES"])
os.makedirs(options["output_folder"], exist_ok=True)
with open(os.path.join(options["output_folder"], "results.json"), "w") as handle:
    json.dump({"folds": {"fold1": {}, "fold2": {}}, "pooled": {"UA": scores[key]}}, handle)
with open(os.path.join(os.path.dirname(options["output_folder"]), "..", "trained.txt"), "a") as handle:
    handle.write(key + "\\n")
"""


def planted_training(tmp_path, monkeypatch, combined_score):
    """A planted train.py for a 2-layer base: layer 1 gains 0.05 with ``ffn``, layer 2
    0.08 with ``msa``, and their combination scores ``combined_score``."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    base = ["msa_ffn", "msa_ffn"]
    scores = planted_scores(
        base, [{"ffn": 0.05, "msa": 0.0}, {"ffn": 0.0, "msa": 0.08}]
    )
    monkeypatch.setenv(
        "PLANTED_SCORES", json.dumps({**scores, "ffn-msa": combined_score})
    )
    return script, base, scores


@pytest.mark.parametrize(
    "combined_score, answer",
    [(0.75, "ffn-msa"), (0.61, "msa_ffn-msa")],
)
def test_a_choice_of_several_layers_is_trained_and_kept_only_if_it_wins(
    tmp_path, monkeypatch, combined_score, answer
):
    """The orchestration with a planted train.py: the 5 candidates of a 2-layer base are
    trained, then the combined per-layer choice, and the answer follows its score."""
    from ser_modules.layer_refinement import run_refinement

    script, base, scores = planted_training(
        tmp_path, monkeypatch, combined_score
    )
    output = tmp_path / "out"
    record = run_refinement(
        [
            "hparams/bas_fbank.yaml",
            "--prepare_folder=unused",
            "--fold=1",
            f"--output_folder={output}",
            "--architecture=[msa_ffn, msa_ffn]",  # YAML, as train.py reads it
            "--n_inner_folds=2",
            "--jobs=2",
        ],
        str(script),
        lambda *args, **kwargs: None,
    )
    trained = (output / "runs" / "trained.txt").read_text().split()
    assert sorted(trained[:5]) == sorted(scores) and trained[5:] == ["ffn-msa"]
    assert record["combined"] == ["ffn", "msa"]
    assert record["combined_score"] == combined_score
    assert "-".join(record["architecture"]) == answer
    with open(output / "refinement.json", encoding="utf-8") as handle:
        assert json.load(handle)["architecture"] == record["architecture"]


def test_an_architecture_that_is_not_a_list_is_refused(tmp_path, capsys):
    from ser_modules.layer_refinement import run_refinement

    with pytest.raises(SystemExit):
        run_refinement(
            [
                "hparams/bas_fbank.yaml",
                "--prepare_folder=unused",
                "--fold=1",
                f"--output_folder={tmp_path}",
                "--architecture=msa_ffn",
            ],
            "unused_train.py",
            lambda *args, **kwargs: None,
        )
    assert "is not a list of blocks" in capsys.readouterr().err
    assert not (tmp_path / "inner").exists()


def test_the_refinement_says_where_its_architectures_rank(
    tmp_path, monkeypatch
):
    """With --architecture_ranking, refinement.json / .md give each candidate's and the
    answer's rank in the outer fold's exhaustive ranking, which never enters the choice;
    an unreadable ranking is refused before anything trains."""
    import itertools

    from ser_modules.architecture_ranking import rank_architectures
    from ser_modules.layer_refinement import run_refinement

    script, base, _ = planted_training(tmp_path, monkeypatch, 0.75)
    # Test scores of the 9 two-layer architectures on fold1 (two seeds each), ordered
    # against the pooled scores: the ranking must not steer the choice.
    test_scores = {}
    for number, pair in enumerate(itertools.product(CANDIDATES, repeat=2)):
        test_scores["-".join(pair)] = [
            0.40 + 0.02 * number,
            0.42 + 0.02 * number,
        ]
    ranking = tmp_path / "ranking.json"
    ranking.write_text(
        json.dumps({"folds": {"fold1": rank_architectures(test_scores)}})
    )
    arguments = [
        "hparams/bas_fbank.yaml",
        "--prepare_folder=unused",
        "--fold=1",
        "--architecture=[msa_ffn,msa_ffn]",
        "--n_inner_folds=2",
    ]
    missing = tmp_path / "refused"
    with pytest.raises(OSError):
        run_refinement(
            [
                *arguments,
                f"--output_folder={missing}",
                f"--architecture_ranking={tmp_path / 'nowhere.json'}",
            ],
            str(script),
            lambda *args, **kwargs: None,
        )
    assert not (missing / "runs").exists()

    output = tmp_path / "out"
    record = run_refinement(
        [
            *arguments,
            f"--output_folder={output}",
            f"--architecture_ranking={ranking}",
        ],
        str(script),
        lambda *args, **kwargs: None,
    )
    assert record["architecture"] == ["ffn", "msa"]  # the pooled scores' choice
    means = {key: sum(values) / 2 for key, values in test_scores.items()}
    expected = {"-".join(a) for a in one_layer_alternatives(base)} | {"ffn-msa"}
    assert set(record["ranks"]) == expected
    for key, entry in record["ranks"].items():
        assert entry["rank"] == 1 + sum(m > means[key] for m in means.values())
        assert entry["of"] == 9
        assert entry["top_third"] == (entry["rank"] <= 3)
    with open(output / "refinement.json", encoding="utf-8") as handle:
        assert json.load(handle)["ranks"] == record["ranks"]
    text = (output / "refinement.md").read_text()
    answer = record["ranks"]["ffn-msa"]
    assert (
        f"| ffn -> msa (**answer**) | 0.7500 | {answer['rank']} of 9 | "
        f"{means['ffn-msa']:.4f} +/- 0.0141 | "
        f"{'yes' if answer['top_third'] else 'no'} |" in text
    )
    assert "| msa_ffn -> msa_ffn (base) | 0.6000 |" in text

    # a ranking of other folds: said, not an error
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"folds": {"fold2": rank_architectures(test_scores)}})
    )
    record = run_refinement(
        [
            *arguments,
            f"--output_folder={output}",
            f"--architecture_ranking={other}",
        ],
        str(script),
        lambda *args, **kwargs: None,
    )
    assert record["ranks"] == {}
    assert (
        "The ranking holds none of these architectures for fold1."
        in (output / "refinement.md").read_text()
    )
