"""Check a BAS architecture one layer at a time by nested cross-validation.

On a small corpus the BAS search's choice is not what all the non-test speakers prefer:
on Urdu every default search derived ``msa_ffn x3``, while nested cross-validation over
a fold's ~23 non-test speakers put an ``ffn`` first block ahead of it on every fold and
seed (README, "Where it ranks"). A fold's 4-6 validation speakers are too few to see it.

This takes an architecture (the search's, or any) as the base and trains, on the inner
folds of one outer fold (:func:`recipes.custom.inner_folds.prepare_inner_folds`: its
training + validation clips in speaker-grouped groups, never its test clips), the base
and every architecture that differs from it in exactly one layer: ``1 + L (C - 1)``
networks (7 for 3 layers of 3 candidate blocks), each scored on every non-test clip by
the inner model that did not train on its speaker (``pooled`` in its ``results.json``).
Each layer then takes the block with the best pooled score among the base's block and
its alternatives (a one-factor-at-a-time design: the per-layer model of
:func:`ser_modules.architecture_ranking.layer_effects` estimated around the base). A tie
keeps the base's block. When those choices change more than one layer, their combination
is trained on the inner folds too and kept only if it scores at least as well as every
candidate; else the best candidate is the answer (``--check_combination=False`` skips
this). The candidates do not depend on each other, so ``--jobs=N`` trains N at once::

    python recipes/custom/refine_architecture.py hparams/bas_fbank.yaml \\
        --data_folder=CORPUS --prepare_folder=PREP --fold=fold1 --output_folder=OUT \\
        (--architecture=[msa_ffn,msa_ffn,msa_ffn] | --bas_results=BAS_OUT/results.json) \\
        [--n_inner_folds=4] [--inner_seed=1234] [--seed=1986] [--jobs=1] \\
        [--check_combination=True] [--architecture_ranking=RANKING/ranking.json] \\
        [train.py options]

writes ``OUT/inner/`` (the inner folds), ``OUT/runs/<architecture>/seed<S>/`` (one
``train.py`` run per candidate, with its log next to it) and ``OUT/refinement.json`` /
``OUT/refinement.md`` (every candidate's pooled score, each layer's choice and the refined
architecture), then prints the ``train.py`` command that trains the refined architecture
on the outer fold. Every candidate is a plain ``train.py`` run, so an interrupted
refinement resumes: finished runs are reused when what produced them is the same
(:mod:`ser_modules.fingerprint`). Options it does not know go to every ``train.py`` run
unchanged (``--cache_folder``, ``--number_of_epochs``, ``--num_layers`` for a 4-layer
base, ...). With ``--architecture_ranking`` (``rank_architectures.py``'s ``ranking.json``
of the outer folds), ``refinement.md`` also says where every candidate and the answer
rank on the outer fold's test clips, as a BAS run's ``results.md`` does; the ranking is
read before anything trains and never enters the choice.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from ser_modules.architecture_ranking import (
    architecture_key,
    derived_ranks,
    load_ranking,
)
from ser_modules.downstream.blocks import CANDIDATES
from ser_modules.manifest import atomic_write_text

REFINEMENT_FILE = "refinement.json"
REFINEMENT_MARKDOWN = "refinement.md"
INNER_OPTIONS_FILE = "inner_options.json"
DEFAULT_SEED = 1986  # the seed of every hparams file


def with_block(architecture, layer, block):
    """``architecture`` with ``block`` in ``layer`` (0-based)."""
    return [*architecture[:layer], block, *architecture[layer + 1 :]]


def one_layer_alternatives(base, candidates=CANDIDATES):
    """The base and every architecture that differs from it in exactly one layer.

    Arguments
    ---------
    base : sequence of str
        One candidate block per layer.
    candidates : sequence of str
        The blocks a layer can take.

    Returns
    -------
    list of list of str
        The base first, then layer by layer the other blocks in ``candidates`` order.
    """
    base = list(base)
    unknown = [block for block in base if block not in candidates]
    if not base or unknown:
        raise ValueError(
            f"architecture {base} must be a non-empty list of blocks out of "
            f"{list(candidates)} (unknown: {unknown})."
        )
    architectures = [base]
    for layer, block in enumerate(base):
        for other in candidates:
            if other != block:
                architectures.append(with_block(base, layer, other))
    return architectures


def choose_layers(base, scores, candidates=CANDIDATES):
    """Each layer's block: the best score among the base and its one-layer alternatives.

    Arguments
    ---------
    base : sequence of str
        The base architecture.
    scores : dict
        ``{architecture_key: score}`` of the base and every one-layer alternative.
    candidates : sequence of str
        The blocks a layer can take.

    Returns
    -------
    dict
        ``architecture`` (the refined one), ``base``, ``base_score`` and ``layers``: per
        layer its ``scores`` (``{block: score}``), ``chosen`` block and ``gain`` (its score
        minus the base's). A tie keeps the base's block.
    """
    base = list(base)
    missing = [
        architecture_key(architecture)
        for architecture in one_layer_alternatives(base, candidates)
        if architecture_key(architecture) not in scores
    ]
    if missing:
        raise ValueError(f"no score for {missing}")
    base_score = scores[architecture_key(base)]
    layers, refined = [], []
    for layer, block in enumerate(base):
        by_block = {
            other: scores[architecture_key(with_block(base, layer, other))]
            for other in candidates
        }
        chosen = block
        for other in candidates:
            if by_block[other] > by_block[chosen]:
                chosen = other
        refined.append(chosen)
        layers.append(
            {
                "layer": layer + 1,
                "scores": by_block,
                "chosen": chosen,
                "gain": by_block[chosen] - base_score,
            }
        )
    return {
        "base": base,
        "base_score": base_score,
        "layers": layers,
        "architecture": refined,
    }


def final_choice(record, scores):
    """The refinement's answer once the per-layer choice has been scored itself.

    When the layers' choices change more than one layer of the base, their combination
    was not among the candidates; trained on the inner folds, it is kept only when it
    scores at least as well as every candidate, else the best candidate is taken (the
    layers' effects were not additive there).

    Arguments
    ---------
    record : dict
        :func:`choose_layers`'s result.
    scores : dict
        ``{architecture_key: score}``: the candidates and, when it is new, the combination.

    Returns
    -------
    dict
        ``record`` with ``combined`` (the per-layer choice), ``combined_score`` (None when
        not scored) and ``architecture`` (the answer).
    """
    combined = list(record["architecture"])
    key = architecture_key(combined)
    result = {**record, "combined": combined, "combined_score": scores.get(key)}
    if key not in scores:
        return result
    best_key = max(
        (k for k in scores if k != key),
        key=lambda k: scores[k],
    )
    if scores[key] < scores[best_key]:
        result["architecture"] = best_key.split("-")
    return result


def pooled_score(results_path, metric, n_inner_folds):
    """The pooled score of a candidate's ``train.py`` run over all its inner folds."""
    if not os.path.isfile(results_path):
        raise FileNotFoundError(
            f"{results_path} does not exist: the candidate's train.py run did not "
            f"finish; see the log next to its folder and run the refinement again "
            f"(finished candidates are reused)."
        )
    with open(results_path, encoding="utf-8") as handle:
        results = json.load(handle)
    folds = sorted(results.get("folds", {}))
    expected = [f"fold{number}" for number in range(1, n_inner_folds + 1)]
    if folds != expected or "pooled" not in results:
        raise ValueError(
            f"{results_path} holds folds {folds}, not the {n_inner_folds} inner folds "
            f"{expected} with a pooled score: a candidate run must train on every "
            f"inner fold (do not pass --fold to the refinement's train.py runs)."
        )
    return float(results["pooled"][metric])


def bas_architecture(results_path, fold):
    """The architecture a BAS run (its ``results.json``) derived on ``fold``."""
    with open(results_path, encoding="utf-8") as handle:
        results = json.load(handle)
    derived = (results.get("search") or {}).get("architectures", {})
    if fold not in derived:
        raise ValueError(
            f"{results_path} has no architecture derived on {fold} (it has "
            f"{sorted(derived) or 'none: not a BAS search run'}); pass the BAS run of "
            f"that fold or --architecture=[...]."
        )
    return list(derived[fold])


def check_inner_options(inner_folder, options):
    """Refuse an output folder whose inner folds were made from other options.

    A candidate run trains on every fold folder in ``inner_folder``, so inner folds of
    another outer fold, count or seed left there would be trained on silently. The
    options are written there (:data:`INNER_OPTIONS_FILE`) once the inner folds are.
    """
    path = os.path.join(inner_folder, INNER_OPTIONS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
        if stored != options:
            changed = sorted(
                key
                for key in {*stored, *options}
                if stored.get(key) != options.get(key)
            )
            raise ValueError(
                f"{inner_folder} holds inner folds made with other options "
                f"({', '.join(f'{key}: {stored.get(key)!r} there, {options.get(key)!r} now' for key in changed)}): "
                "pass a new --output_folder, or delete that folder to redo it."
            )


def candidate_command(
    train_script,
    hparams_file,
    architecture,
    seed,
    inner_folder,
    output_folder,
    extra,
):
    """The ``train.py`` command line of one candidate (all inner folds, pooled)."""
    return [
        sys.executable,
        train_script,
        hparams_file,
        *extra,
        f"--prepare_folder={inner_folder}",
        "--skip_prep=True",
        "--search=False",
        f"--architecture=[{','.join(architecture)}]",
        f"--seed={seed}",
        f"--output_folder={output_folder}",
    ]


def refinement_ranks(record, ranking):
    """Where the refinement's candidates and answer rank in an exhaustive ranking.

    The ranking (``rank_architectures.py``'s ``ranking.json``) scores every architecture
    of the space on the outer fold's *test* clips: it says how good the refinement's
    answer turned out, and never enters the choice, which is made on the pooled inner-CV
    scores alone.

    Arguments
    ---------
    record : dict
        The refinement record (``base``, ``fold``, ``scores``, ``architecture`` and, when
        the layers' choices were combined, ``combined``).
    ranking : dict
        A ranking record (:func:`ser_modules.architecture_ranking.load_ranking`).

    Returns
    -------
    dict
        ``{architecture_key: derived_ranks entry}`` for every candidate, the combination
        and the answer that the ranking holds for the fold (empty when it does not rank
        the fold).
    """
    architectures = [
        *one_layer_alternatives(record["base"], record["candidates"]),
        record.get("combined", record["architecture"]),
        record["architecture"],
    ]
    ranks = {}
    for architecture in architectures:
        entry = derived_ranks({record["fold"]: architecture}, ranking).get(
            record["fold"]
        )
        if entry is not None:
            ranks[architecture_key(architecture)] = entry
    return ranks


def _ranks_lines(record):
    """``refinement.md``'s lines on where the candidates rank (empty without a ranking)."""
    if "ranking" not in record:
        return []
    lines = [
        f"## Where they rank on the outer fold's test clips ({record['ranking']})",
        "",
    ]
    ranks = record["ranks"]
    if not ranks:
        return lines + [
            f"The ranking holds none of these architectures for {record['fold']}.",
            "",
        ]
    metric = record["metric"]
    final = architecture_key(record["architecture"])
    base = architecture_key(record["base"])
    lines += [
        "For reading only: the choice above used the pooled inner-CV scores, never "
        "these test scores.",
        "",
        f"| architecture | pooled inner-CV {metric} | rank | test {metric} "
        "(mean +/- std over seeds) | top third |",
        "|---|---|---|---|---|",
    ]
    for key, entry in sorted(ranks.items(), key=lambda item: item[1]["rank"]):
        name = key.replace("-", " -> ")
        if key == base:
            name += " (base)"
        if key == final:
            name += " (**answer**)"
        score = record["scores"].get(key)
        lines.append(
            f"| {name} | {'' if score is None else f'{score:.4f}'} | "
            f"{entry['rank']} of {entry['of']} | {entry['mean']:.4f} +/- "
            f"{entry['std']:.4f} | {'yes' if entry['top_third'] else 'no'} |"
        )
    first = next(iter(ranks.values()))
    lines += [
        "",
        f"The fold's best: `{first['best'].replace('-', ' -> ')}` "
        f"({first['best_mean']:.4f}).",
        "",
    ]
    return lines


def refinement_markdown(record):
    """``refinement.md``: every candidate's pooled score and each layer's choice."""
    metric = record["metric"]
    lines = [
        f"# Layer-by-layer refinement of `{architecture_key(record['base'])}` "
        f"({record['fold']}, seed {record['seed']})",
        "",
        f"Pooled inner-CV {metric} over every non-test clip of {record['fold']} "
        f"({record['n_inner_folds']} speaker-grouped inner folds, seed "
        f"{record['inner_seed']}); base: {record['base_score']:.4f}.",
        "",
        "| layer | " + " | ".join(record["candidates"]) + " | chosen | gain |",
        "|---" * (len(record["candidates"]) + 3) + "|",
    ]
    for layer in record["layers"]:
        cells = []
        for block in record["candidates"]:
            text = f"{layer['scores'][block]:.4f}"
            if block == record["base"][layer["layer"] - 1]:
                text += " (base)"
            cells.append(text)
        lines.append(
            f"| {layer['layer']} | "
            + " | ".join(cells)
            + f" | `{layer['chosen']}` | {layer['gain']:+.4f} |"
        )
    combined = record.get("combined", record["architecture"])
    lines.append("")
    if combined != record["architecture"]:
        lines.append(
            f"The layers' choices combined, `{architecture_key(combined)}`, scored "
            f"{record['combined_score']:.4f}, below the best candidate: not additive here."
        )
    elif (
        combined != record["base"]
        and record.get("combined_score") is None
        and architecture_key(combined) not in record["scores"]
    ):
        lines.append(
            "The layers' choices combined change more than one layer and were not "
            "trained on the inner folds (--check_combination=False)."
        )
    final = architecture_key(record["architecture"])
    lines += [
        f"Refined architecture: `{final}`"
        + (
            " (the base)."
            if record["architecture"] == record["base"]
            else (
                f" (pooled {metric} {record['scores'][final]:.4f})."
                if final in record["scores"]
                else "."
            )
        ),
        "",
        *_ranks_lines(record),
    ]
    return "\n".join(lines)


def true_or_false(text):
    """``--check_combination``'s value: True or False, nothing else."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is not True or False")
    return text.lower() == "true"


def run_refinement(argv, train_script, prepare_inner_folds):
    """Parse the command line, train the candidates, write and return the refinement."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # a train.py option is never taken for a prefix of ours
        usage="refine_architecture.py HPARAMS --prepare_folder=PREP --fold=foldK "
        "--output_folder=OUT (--architecture=[...] | --bas_results=RESULTS) "
        "[--architecture_ranking=RANKING.json] [train.py options]",
    )
    parser.add_argument("hparams_file")
    parser.add_argument("--prepare_folder", required=True)
    parser.add_argument("--fold", required=True)
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--architecture", default=None)
    parser.add_argument("--bas_results", default=None)
    parser.add_argument("--n_inner_folds", type=int, default=4)
    parser.add_argument("--inner_seed", type=int, default=1234)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--metric", default="UA")
    parser.add_argument("--architecture_ranking", default=None)
    parser.add_argument(
        "--check_combination",
        type=true_or_false,
        default=True,
    )
    own, extra = parser.parse_known_args(argv)
    # --fold=3 or --fold=fold3 (train.py's and inner_folds.py's spellings)
    own.fold = own.fold if own.fold.startswith("fold") else f"fold{own.fold}"
    if (own.architecture is None) == (own.bas_results is None):
        parser.error(
            "give exactly one of --architecture=[...] and --bas_results"
        )
    for option in extra:
        name = option.split("=", 1)[0]
        if name in (
            "--fold",
            "--skip_prep",
            "--search",
            "--train_csv",
            "--valid_csv",
            "--test_csv",
        ):
            parser.error(
                f"{name} is set by the refinement for its train.py runs; leave it out."
            )
    if own.architecture is not None:
        # read as train.py reads it: a YAML list (imported here: the recipe module
        # loads SpeechBrain, which nothing else of this module needs)
        from ser_modules.recipe import parse_overrides

        base = parse_overrides(f"architecture: {own.architecture}")[
            "architecture"
        ]
        if not isinstance(base, list):
            parser.error(
                f"--architecture={own.architecture} is not a list of blocks, "
                "e.g. --architecture=[msa_ffn,msa_ffn,msa_ffn]"
            )
    else:
        base = bas_architecture(own.bas_results, own.fold)
    ranking = None
    if own.architecture_ranking is not None:
        # read now: a wrong path is reported before any training, not after
        ranking = load_ranking(own.architecture_ranking)
    architectures = one_layer_alternatives(base)

    output_folder = os.path.abspath(own.output_folder)
    inner_folder = os.path.join(output_folder, "inner")
    inner_options = {
        "prepare_folder": os.path.abspath(own.prepare_folder),
        "fold": own.fold,
        "n_folds": own.n_inner_folds,
        "seed": own.inner_seed,
    }
    check_inner_options(inner_folder, inner_options)
    prepare_inner_folds(
        own.prepare_folder,
        inner_folder,
        fold=own.fold,
        n_folds=own.n_inner_folds,
        seed=own.inner_seed,
    )
    atomic_write_text(
        os.path.join(inner_folder, INNER_OPTIONS_FILE),
        json.dumps(inner_options, indent=2) + "\n",
    )

    def train(architecture):
        folder = os.path.join(
            output_folder,
            "runs",
            architecture_key(architecture),
            f"seed{own.seed}",
        )
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        command = candidate_command(
            train_script,
            own.hparams_file,
            architecture,
            own.seed,
            inner_folder,
            folder,
            extra,
        )
        with open(f"{folder}.log", "w", encoding="utf-8") as log:
            code = subprocess.call(
                command, stdout=log, stderr=subprocess.STDOUT
            )
        print(
            f"{architecture_key(architecture)}: "
            + (
                "done"
                if code == 0
                else f"failed (exit {code}, see {folder}.log)"
            ),
            flush=True,
        )
        return folder, code

    with ThreadPoolExecutor(max_workers=max(1, own.jobs)) as pool:
        finished = list(pool.map(train, architectures))
    failed = [f"{folder}.log" for folder, code in finished if code != 0]
    if failed:
        raise RuntimeError(
            f"{len(failed)} candidate run(s) failed; see {failed}. Fix the cause and "
            "run the same command again: finished candidates are reused."
        )
    scores = {
        architecture_key(architecture): pooled_score(
            os.path.join(folder, "results.json"), own.metric, own.n_inner_folds
        )
        for architecture, (folder, _) in zip(architectures, finished)
    }
    chosen = choose_layers(base, scores)
    combined = chosen["architecture"]
    if own.check_combination and architecture_key(combined) not in scores:
        folder, code = train(combined)
        if code != 0:
            raise RuntimeError(
                f"the run of the combined choice failed; see {folder}.log. Run the "
                "same command again: finished candidates are reused."
            )
        scores[architecture_key(combined)] = pooled_score(
            os.path.join(folder, "results.json"), own.metric, own.n_inner_folds
        )
    record = {
        **final_choice(chosen, scores),
        "fold": own.fold,
        "seed": own.seed,
        "metric": own.metric,
        "n_inner_folds": own.n_inner_folds,
        "inner_seed": own.inner_seed,
        "candidates": list(CANDIDATES),
        "scores": scores,
        "hparams_file": own.hparams_file,
        "train_options": extra,
    }
    if ranking is not None:
        record["ranking"] = own.architecture_ranking
        record["ranks"] = refinement_ranks(record, ranking)
    atomic_write_text(
        os.path.join(output_folder, REFINEMENT_FILE),
        json.dumps(record, indent=2) + "\n",
    )
    markdown = refinement_markdown(record)
    atomic_write_text(
        os.path.join(output_folder, REFINEMENT_MARKDOWN), markdown
    )
    print(markdown)
    print(
        "Train it on the outer fold:\n  python "
        + os.path.relpath(train_script)
        + f" {own.hparams_file} {' '.join(extra)} --prepare_folder={own.prepare_folder}"
        f" --skip_prep=True --fold={own.fold.removeprefix('fold')} --search=False"
        f" --architecture=[{','.join(record['architecture'])}] --seed={own.seed}"
        " --output_folder=..."
    )
    return record


def main(train_script, prepare_inner_folds, argv=None):
    """Entry point of ``recipes/<DATASET>/refine_architecture.py``: errors as one message."""
    try:
        return run_refinement(
            sys.argv[1:] if argv is None else argv,
            train_script,
            prepare_inner_folds,
        )
    except (OSError, ValueError, RuntimeError) as error:
        sys.exit(f"refine_architecture.py: error: {error}")
