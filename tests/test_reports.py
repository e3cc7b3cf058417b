"""Specification of the run reports (ser_modules/reports/): the papers' tables built from
results.json files, row naming, protocol checks, bad input and figures."""

import json
import os

import matplotlib.image
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from ser_modules.metrics import aggregate_folds
from ser_modules.reports.papers import paper_model_name, paper_upstream_name
from ser_modules.reports.run_report import results_markdown
from ser_modules.reports.runs import ReportError, collect_runs
from ser_modules.reports.tables import (
    bas_table,
    build_report,
    main,
    vesper_table,
    vesper_table4,
)
from ser_modules.run_identity import RESULTS_FORMAT

LABELS = ["ang", "hap", "neu", "sad"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fold_predictions(seed, num_folds=3, size=40):
    """Hand-made predictions per fold, right about half of the time."""
    rng = np.random.default_rng(seed)
    folds = {}
    for fold in range(1, num_folds + 1):
        y_true = rng.integers(0, len(LABELS), size).tolist()
        y_pred = [
            t if rng.random() < 0.5 else int(rng.integers(0, len(LABELS)))
            for t in y_true
        ]
        folds[f"fold{fold}"] = (
            [LABELS[t] for t in y_true],
            [LABELS[p] for p in y_pred],
        )
    return folds


FBANK = {
    "kind": "fbank",
    "layers_used": [0],
    "num_representations": 1,
    "width": 80,
    "source": None,
    "content_sha256": "f" * 64,
    "identity": {"kind": "fbank", "n_mels": 80},
}


def hf_upstream(layers, width, model_type="wavlm", digest="a"):
    """An upstream record of a Hugging Face folder (as run_identity.upstream_record writes)."""
    return {
        "kind": model_type,
        "model_type": model_type,
        "num_hidden_layers": layers,
        "hidden_size": width,
        "layers_used": list(range(layers + 1)),
        "num_representations": layers + 1,
        "width": width,
        "source": f"/models/{model_type}-{layers}x{width}",
        "content_sha256": digest * 64,
        "identity": {"kind": model_type, "weights_sha256": {"m": digest}},
    }


def model(name, **settings):
    """A model record (as run_identity.model_record writes)."""
    record = {"downstream_model": name, "search": False}
    record.update(settings)
    record.setdefault("layer_selection", "weighted_sum")
    return record


TRANSFORMER = model("transformer", num_layers=3)
BAS = model("blocks", search=True, search_layers=3)
FFN = model("ffn")
SUPERB_MODEL = model("superb")


def write_run(
    folder,
    model_record,
    upstream=FBANK,
    dataset="IEMOCAP",
    hparams=None,
    seed=0,
    num_folds=3,
    selection_set="valid",
    preparation=None,
    search=None,
    crop_seconds=6.5,
    hparams_file="superb_ssl.yaml",
):
    """A run folder with a results.json shaped like ser_modules.recipe.summarise writes it."""
    predictions = _fold_predictions(seed, num_folds)
    settings = {
        "crop_seconds": crop_seconds,
        "selection_metric": "UA",
        **(hparams or {}),
    }
    results = {
        "results_format": RESULTS_FORMAT,
        "identity": {
            "dataset": dataset,
            "protocol": {
                "selection_set": selection_set,
                "selection_metric": "UA",
                "crop_seconds": crop_seconds,
                "eval_crop_seconds": crop_seconds,
                "preparation": preparation or {},
            },
            "model": model_record,
            "upstream": upstream,
            "hparams_file": {
                "path": f"/recipes/hparams/{hparams_file}",
                "name": hparams_file,
                "sha256": "0" * 64,
            },
            "hparams": settings,
            "overrides": dict(hparams or {}),
            "seed": settings.get("seed", 1986),
            "code": {"package": "0", "sources_sha256": "1" * 64, "git": None},
        },
        "dataset": dataset,
        "hparams_file": hparams_file,
        "overrides": dict(hparams or {}),
        "preparation": preparation or {},
        "selection": {"metric": "UA", "set": selection_set},
        "selected_epochs": {name: 7 for name in predictions},
        **aggregate_folds(predictions, labels=LABELS),
    }
    if search is not None:
        results["search"] = search
    os.makedirs(folder, exist_ok=True)
    with open(
        os.path.join(folder, "results.json"), "w", encoding="utf-8"
    ) as handle:
        json.dump(results, handle)
    return str(folder), predictions


def _search_record(folder, architectures, heatmap_exists=True):
    candidates = ["msa_ffn", "msa", "ffn"]
    heatmaps = {}
    for fold in architectures:
        path = os.path.join(folder, fold, "search", "theta_heatmap.png")
        if heatmap_exists:
            from ser_modules.downstream import plot_theta_heatmap

            plot_theta_heatmap(
                np.full((3, 3), 1 / 3), candidates, path, f"{fold}", dpi=50
            )
        heatmaps[fold] = path
    wins = np.zeros((3, 3), dtype=int)
    for architecture in architectures.values():
        for layer, block in enumerate(architecture):
            wins[layer, candidates.index(block)] += 1
    return {
        "architectures": architectures,
        "probabilities": {
            fold: [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]]
            for fold in architectures
        },
        "ties": {fold: [] for fold in architectures},
        "heatmaps": heatmaps,
        "candidates": candidates,
        "block_wins": wins.tolist(),
    }


def _row(rows, *label):
    matching = [row for row in rows if row["label"] == label]
    assert len(matching) == 1, [row["label"] for row in rows]
    return matching[0]


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_SIGNATURE and os.path.getsize(path) > 0


# --- row naming -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, expected",
    [
        (model("transformer", num_layers=3), "3L-baseline"),
        (model("transformer", num_layers=4), "4L-baseline"),
        (model("blocks", search=True, search_layers=3), "3L-BAS"),
        (model("blocks", search=True, search_layers=4), "4L-BAS"),
        (model("ffn"), "simple-FFN"),
        (model("superb"), "SUPERB classifier"),
        (model("blocks", architecture=["ffn", "msa"]), "blocks ffn-msa"),
        (model("shiftformer"), "Shiftformer"),
        (
            model(
                "speechformer",
                speechformer_layers=[2, 2, 4, 4],
                speechformer_expand=[1, 1, 1],
            ),
            "SpeechFormer-S",
        ),
        (
            model(
                "speechformer",
                speechformer_layers=[2, 2, 4, 4],
                speechformer_expand=[1, 1, 2],
            ),
            "SpeechFormer-B",
        ),
        (model("linear_svm"), "linear SVM"),
    ],
)
def test_model_name_comes_from_the_recorded_model(record, expected):
    assert paper_model_name(record) == expected


@pytest.mark.parametrize(
    "record, expected",
    [
        (hf_upstream(24, 1024), "WavLM Large"),
        (hf_upstream(12, 768, "hubert"), "HuBERT Base"),
        (hf_upstream(24, 1024, "hubert"), "HuBERT Large"),
        (hf_upstream(12, 1024), "Vesper-12"),
        (hf_upstream(4, 1024), "Vesper-4"),
        (FBANK, "Fbank"),
        (
            {
                "kind": "opensmile",
                "feature_set": "eGeMAPSv02",
                "feature_level": "lld",
            },
            "eGeMAPS LLDs",
        ),
        (
            {
                "kind": "opensmile",
                "feature_set": "ComParE_2016",
                "feature_level": "functionals",
            },
            "ComParE functionals",
        ),
    ],
)
def test_upstream_name_comes_from_the_recorded_kind_and_shape(record, expected):
    assert paper_upstream_name(record) == expected


def test_a_vesper_export_is_named_by_its_mark_whatever_its_width():
    marked = {**hf_upstream(2, 32), "vesper": {"num_layers": 2}}
    assert paper_upstream_name(marked) == "Vesper-2"


def test_upstream_of_another_shape_is_named_by_its_shape_not_a_paper_model():
    assert (
        paper_upstream_name(hf_upstream(2, 32)) == "WavLM (2 layers, 32 dims)"
    )
    assert (
        paper_upstream_name(hf_upstream(4, 32, "hubert"))
        == "HuBERT (4 layers, 32 dims)"
    )


def test_names_ignore_file_and_folder_names_and_the_files_beside_results(
    tmp_path,
):
    # Every name on disk says HuBERT Base and a SUPERB classifier; the identity says
    # WavLM Large and 4L-BAS, and only the identity counts.
    folder, _ = write_run(
        tmp_path / "superb_hubert_base",
        model("blocks", search=True, search_layers=4),
        upstream=hf_upstream(24, 1024),
        hparams_file="superb_hubert.yaml",
    )
    (tmp_path / "superb_hubert_base" / "hyperparams.yaml").write_text(
        "downstream_model: superb\nssl_source: /models/hubert-base\n"
    )
    runs, _ = collect_runs([folder])
    assert (runs[0].upstream, runs[0].model) == ("WavLM Large", "4L-BAS")


def test_results_json_without_identity_is_refused_with_what_to_do(tmp_path):
    folder, _ = write_run(tmp_path / "old", FFN)
    path = os.path.join(folder, "results.json")
    results = json.load(open(path, encoding="utf-8"))
    del results["results_format"], results["identity"]
    json.dump(results, open(path, "w", encoding="utf-8"))
    with pytest.raises(ReportError) as error:
        collect_runs([folder])
    message = str(error.value)
    assert path in message and "format 1" in message
    assert "Re-run the recipe into a new --output_folder" in message


def test_identity_without_its_model_is_named(tmp_path):
    folder, _ = write_run(tmp_path / "run", FFN)
    path = os.path.join(folder, "results.json")
    results = json.load(open(path, encoding="utf-8"))
    del results["identity"]["model"]
    json.dump(results, open(path, "w", encoding="utf-8"))
    with pytest.raises(ReportError, match="'identity' lacks \\['model'\\]"):
        collect_runs([folder])


# --- tables -----------------------------------------------------------------------------


def test_bas_table_cells_are_the_mean_and_std_over_folds_in_percent(tmp_path):
    baseline, baseline_predictions = write_run(
        tmp_path / "t4", model("transformer", num_layers=4)
    )
    bas, bas_predictions = write_run(
        tmp_path / "b4",
        model("blocks", search=True, search_layers=4),
        seed=1,
    )
    runs, _ = collect_runs([baseline, bas])
    columns, rows = bas_table(runs)
    assert columns == [("IEMOCAP", "WA"), ("IEMOCAP", "UA")]
    for label, predictions in (
        ("4L-baseline", baseline_predictions),
        ("4L-BAS", bas_predictions),
    ):
        wa = [sk_metrics.accuracy_score(t, p) for t, p in predictions.values()]
        ua = [
            sk_metrics.balanced_accuracy_score(t, p)
            for t, p in predictions.values()
        ]
        cells = _row(rows, "Fbank", label)["cells"]
        assert cells[("IEMOCAP", "WA")]["mean"] == pytest.approx(
            100 * np.mean(wa)
        )
        assert cells[("IEMOCAP", "WA")]["std"] == pytest.approx(
            100 * np.std(wa)
        )
        assert cells[("IEMOCAP", "UA")]["mean"] == pytest.approx(
            100 * np.mean(ua)
        )


def test_bas_table_rows_follow_the_paper_order_whatever_the_argument_order(
    tmp_path,
):
    paths = [
        write_run(tmp_path / "superb", SUPERB_MODEL)[0],
        write_run(tmp_path / "b3", BAS)[0],
        write_run(tmp_path / "ffn", FFN)[0],
        write_run(tmp_path / "t3", TRANSFORMER)[0],
    ]
    _, rows = bas_table(collect_runs(paths)[0])
    assert [row["label"][1] for row in rows] == [
        "3L-baseline",
        "simple-FFN",
        "3L-BAS",
        "SUPERB classifier",
    ]


def test_bas_table_shows_wf1_on_meld_and_wa_ua_elsewhere(tmp_path):
    iemocap, _ = write_run(tmp_path / "iemocap", FFN)
    meld, predictions = write_run(
        tmp_path / "meld",
        FFN,
        dataset="MELD",
        num_folds=1,
        crop_seconds=4.5,
    )
    columns, rows = bas_table(collect_runs([iemocap, meld])[0])
    assert columns == [("IEMOCAP", "WA"), ("IEMOCAP", "UA"), ("MELD", "WF1")]
    y_true, y_pred = predictions["fold1"]
    expected = 100 * sk_metrics.f1_score(y_true, y_pred, average="weighted")
    assert _row(rows, "Fbank", "simple-FFN")["cells"][("MELD", "WF1")][
        "mean"
    ] == pytest.approx(expected)


def test_paper_number_stands_next_to_the_matching_row(tmp_path):
    bas, _ = write_run(
        tmp_path / "b4",
        model("blocks", search=True, search_layers=4),
        upstream=hf_upstream(24, 1024),
    )
    ffn, _ = write_run(tmp_path / "ffn", FFN)
    runs, _ = collect_runs([bas, ffn])
    _, rows = bas_table(runs)
    assert (
        _row(rows, "WavLM Large", "4L-BAS")["cells"][("IEMOCAP", "UA")]["paper"]
        == 74.95
    )
    assert (
        _row(rows, "Fbank", "simple-FFN")["cells"][("IEMOCAP", "UA")]["paper"]
        is None
    )
    report = build_report([bas, ffn], out=str(tmp_path / "report.md"))
    assert "(paper 74.03)" in report and "(paper 74.95)" in report


def test_vesper_tables_hold_superb_runs_by_upstream_and_classifier_input(
    tmp_path,
):
    vesper = hf_upstream(12, 1024)
    weighted, predictions = write_run(
        tmp_path / "w", SUPERB_MODEL, upstream=vesper
    )
    last, _ = write_run(
        tmp_path / "l",
        model("superb", layer_selection="last"),
        upstream=vesper,
        seed=3,
        hparams={"layer_selection": "last"},
    )
    bas, _ = write_run(tmp_path / "b", BAS, upstream=vesper)
    runs, _ = collect_runs([weighted, last, bas])

    columns, rows = vesper_table(runs)
    assert columns == [("IEMOCAP", "WA"), ("IEMOCAP", "UA"), ("IEMOCAP", "WF1")]
    assert [row["label"] for row in rows] == [("Vesper-12",)]
    wf1 = [
        sk_metrics.f1_score(t, p, average="weighted")
        for t, p in predictions.values()
    ]
    assert rows[0]["cells"][("IEMOCAP", "WF1")]["mean"] == pytest.approx(
        np.mean(wf1)
    )
    assert rows[0]["cells"][("IEMOCAP", "WA")]["paper"] == 0.707

    _, rows = vesper_table(runs, by_input=True)
    assert [row["label"] for row in rows] == [
        ("Vesper-12", "weighted"),
        ("Vesper-12", "last"),
    ]
    assert rows[1]["cells"][("IEMOCAP", "UA")]["paper"] == 0.712
    report = build_report([weighted, last, bas])
    assert "## Vesper Table VIII layout" in report


def test_vesper_table4_holds_shiftformer_and_speechformer_by_dataset_and_upstream(
    tmp_path,
):
    vesper = hf_upstream(4, 1024)
    speechformer_s = model(
        "speechformer",
        speechformer_layers=[2, 2, 4, 4],
        speechformer_expand=[1, 1, 1],
    )
    shift, predictions = write_run(
        tmp_path / "s",
        model("shiftformer"),
        upstream=vesper,
        dataset="CREMA-D",
    )
    speech, _ = write_run(
        tmp_path / "f",
        speechformer_s,
        upstream=vesper,
        dataset="CREMA-D",
        seed=2,
    )
    switched, _ = write_run(
        tmp_path / "w",
        speechformer_s,
        upstream=hf_upstream(12, 768, digest="b"),
        dataset="CREMA-D",
        seed=4,
    )
    fbank, _ = write_run(
        tmp_path / "b",
        model("shiftformer"),
        dataset="CREMA-D",
        seed=6,
    )
    superb, _ = write_run(
        tmp_path / "p", SUPERB_MODEL, dataset="CREMA-D", seed=8
    )
    runs, _ = collect_runs([superb, fbank, switched, speech, shift])

    columns, rows = vesper_table4(runs)
    assert columns == [
        (name, metric)
        for name in ("Shiftformer", "SpeechFormer-S")
        for metric in ("WA", "UA", "WF1")
    ]
    assert [row["label"] for row in rows] == [
        ("CREMA-D", "Fbank"),
        ("CREMA-D", "WavLM Base"),
        ("CREMA-D", "Vesper-4"),
    ]
    vesper_row = _row(rows, "CREMA-D", "Vesper-4")
    ua = [
        sk_metrics.recall_score(t, p, average="macro")
        for t, p in predictions.values()
    ]
    assert vesper_row["cells"][("Shiftformer", "UA")]["mean"] == pytest.approx(
        np.mean(ua)
    )
    assert vesper_row["cells"][("Shiftformer", "WA")]["paper"] == 0.780
    assert vesper_row["cells"][("SpeechFormer-S", "WF1")]["paper"] == 0.760
    assert (
        _row(rows, "CREMA-D", "WavLM Base")["cells"][("SpeechFormer-S", "UA")][
            "paper"
        ]
        == 0.698
    )
    assert ("SpeechFormer-S", "UA") not in _row(rows, "CREMA-D", "Fbank")[
        "cells"
    ]
    report = build_report([superb, fbank, switched, speech, shift])
    assert "## Vesper Table IV layout" in report and "(paper 0.783)" in report


def test_runs_of_one_cell_are_told_apart_by_the_settings_that_differ(tmp_path):
    first, _ = write_run(tmp_path / "s1", FFN, hparams={"seed": 1})
    second, _ = write_run(tmp_path / "s2", FFN, hparams={"seed": 2}, seed=5)
    _, rows = bas_table(collect_runs([first, second])[0])
    assert [row["label"] for row in rows] == [
        ("Fbank", "simple-FFN [seed=1]"),
        ("Fbank", "simple-FFN [seed=2]"),
    ]


def test_two_upstreams_of_one_name_are_told_apart_by_their_content(tmp_path):
    # Two Vesper-12 pretrainings: same shape, other weights.
    first, _ = write_run(tmp_path / "a", FFN, upstream=hf_upstream(12, 1024))
    second, _ = write_run(
        tmp_path / "b", FFN, upstream=hf_upstream(12, 1024, digest="c"), seed=5
    )
    _, rows = bas_table(collect_runs([first, second])[0])
    assert [row["label"] for row in rows] == [
        ("Vesper-12", "simple-FFN [upstream_sha256=aaaaaaaaaaaa]"),
        ("Vesper-12", "simple-FFN [upstream_sha256=cccccccccccc]"),
    ]


def test_two_runs_with_identical_settings_are_refused(tmp_path):
    first, _ = write_run(tmp_path / "a", FFN)
    second, _ = write_run(tmp_path / "b", FFN, seed=5)
    with pytest.raises(ReportError, match="same table cell") as error:
        collect_runs([first, second])
    assert first in str(error.value) and second in str(error.value)


def test_the_same_run_given_twice_counts_once(tmp_path):
    folder, _ = write_run(tmp_path / "a", FFN)
    runs, _ = collect_runs([folder, os.path.join(folder, "results.json")])
    assert len(runs) == 1


def test_bas_search_summary_lists_architectures_block_wins_and_heatmaps(
    tmp_path,
):
    architectures = {
        "fold1": ["ffn", "msa", "msa_ffn"],
        "fold2": ["ffn", "msa", "msa"],
        "fold3": ["ffn", "msa_ffn", "msa"],
    }
    search = _search_record(str(tmp_path / "bas"), architectures)
    folder, _ = write_run(tmp_path / "bas", BAS, search=search)
    report = build_report([folder], out=str(tmp_path / "report.md"))
    assert (
        "| fold2 | ffn -> msa -> msa | [theta](bas/fold2/search/theta_heatmap.png) |"
        in report
    )
    assert "| overall (most wins per layer) | ffn -> msa -> msa |" in report
    assert "| 1 | 0 | 0 | 3 |" in report
    assert "First layer `ffn` in 3 of 3 searches" in report


# --- protocols ---------------------------------------------------------------------------


def test_runs_selected_on_different_sets_are_refused_with_the_runs_named(
    tmp_path,
):
    valid, _ = write_run(tmp_path / "valid", FFN)
    test, _ = write_run(tmp_path / "test", BAS, selection_set="test")
    other, _ = write_run(tmp_path / "other", SUPERB_MODEL)
    with pytest.raises(ReportError) as error:
        collect_runs([valid, test, other])
    message = str(error.value)
    assert os.path.join(test, "results.json") in message
    assert 'selection set: "test" (the others: "valid")' in message
    assert os.path.join(valid, "results.json") not in message


def test_runs_of_another_split_or_crop_are_refused(tmp_path):
    speaker, _ = write_run(
        tmp_path / "a", FFN, preparation={"protocol": "speaker"}
    )
    session, _ = write_run(
        tmp_path / "b", BAS, preparation={"protocol": "session"}
    )
    cropped, _ = write_run(
        tmp_path / "c",
        SUPERB_MODEL,
        preparation={"protocol": "session"},
        crop_seconds=3.0,
    )
    with pytest.raises(ReportError) as error:
        collect_runs([speaker, session, cropped])
    message = str(error.value)
    assert (
        'preparation protocol: "speaker" (the others of the IEMOCAP runs: "session")'
        in message
    )
    assert "crop_seconds: 3.0" in message


def test_recorded_preparation_options_are_compared_not_the_files_on_disk(
    tmp_path,
):
    # Both identities record the split (defaults included); a prepare_options.json left
    # in a run folder says something else and is not read.
    first, _ = write_run(
        tmp_path / "a",
        FFN,
        dataset="CREMA-D",
        crop_seconds=3.0,
        preparation={"split": "random", "seed": 2013},
    )
    os.makedirs(tmp_path / "a" / "prepared")
    (tmp_path / "a" / "prepared" / "prepare_options.json").write_text(
        json.dumps({"options": {"split": "speaker", "seed": 2013}})
    )
    second, _ = write_run(
        tmp_path / "b",
        BAS,
        dataset="CREMA-D",
        crop_seconds=3.0,
        preparation={"split": "speaker", "seed": 2013},
    )
    with pytest.raises(ReportError, match="preparation split"):
        collect_runs([first, second])


def test_datasets_may_differ_in_crop_and_preparation(tmp_path):
    iemocap, _ = write_run(
        tmp_path / "a", FFN, preparation={"protocol": "session"}
    )
    meld, _ = write_run(
        tmp_path / "b",
        FFN,
        dataset="MELD",
        crop_seconds=4.5,
        num_folds=1,
    )
    runs, differences = collect_runs([iemocap, meld])
    assert len(runs) == 2 and differences == {}


def test_allow_mixed_keeps_the_runs_and_marks_the_one_that_differs(tmp_path):
    valid, _ = write_run(tmp_path / "valid", FFN)
    valid_too, _ = write_run(tmp_path / "valid2", SUPERB_MODEL)
    test, _ = write_run(tmp_path / "test", BAS, selection_set="test")
    report = build_report([valid, valid_too, test], allow_mixed=True)
    assert "| Fbank | 3L-BAS †1 |" in report
    assert "| Fbank | simple-FFN |" in report
    assert (
        '- †1 IEMOCAP: Fbank 3L-BAS: selection set: "test" (the others: "valid")'
        in report
    )


# --- bad input ---------------------------------------------------------------------------


def test_folder_without_results_is_named(tmp_path):
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ReportError, match="unfinished holds no results.json"):
        collect_runs([str(tmp_path / "unfinished")])


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ReportError, match="nowhere.json does not exist"):
        collect_runs([str(tmp_path / "nowhere.json")])


def test_truncated_results_json_is_named(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"dataset": "IEMOCAP", "folds": {')
    with pytest.raises(ReportError, match="results.json is not valid JSON"):
        collect_runs([str(path)])


@pytest.mark.parametrize("content", [{"loss": 0.3, "epoch": 4}, [1, 2, 3]])
def test_json_of_another_program_is_named(tmp_path, content):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ReportError, match="metrics.json"):
        collect_runs([str(path)])


def test_fold_without_scores_is_named(tmp_path):
    folder, _ = write_run(tmp_path / "run", FFN)
    path = os.path.join(folder, "results.json")
    results = json.load(open(path, encoding="utf-8"))
    del results["folds"]["fold2"]["UA"]
    json.dump(results, open(path, "w", encoding="utf-8"))
    with pytest.raises(
        ReportError, match="fold 'fold2' lacks the scores \\['UA'\\]"
    ):
        collect_runs([folder])


def test_search_entry_without_architectures_is_named(tmp_path):
    folder, _ = write_run(tmp_path / "bas", BAS, search={"heatmaps": {}})
    with pytest.raises(
        ReportError, match="'search' entry lacks the architectures"
    ):
        collect_runs([folder])


def test_command_line_reports_errors_without_traceback(tmp_path, capsys):
    good, _ = write_run(tmp_path / "good", FFN)
    (tmp_path / "bad.json").write_text("not json")
    assert main([good, str(tmp_path / "bad.json")]) == 2
    error = capsys.readouterr().err
    assert (
        error.startswith("error: ")
        and "bad.json" in error
        and "Traceback" not in error
    )


# --- output and figures ----------------------------------------------------------------


def test_command_line_writes_the_report_and_valid_pngs(tmp_path, capsys):
    architectures = {
        "fold1": ["ffn", "msa", "msa"],
        "fold2": ["ffn", "msa", "msa_ffn"],
    }
    # fold2's heatmap is gone from disk: it is re-plotted from the stored probabilities.
    search = _search_record(str(tmp_path / "bas"), architectures)
    os.remove(search["heatmaps"]["fold2"])
    bas, _ = write_run(tmp_path / "bas", BAS, search=search, num_folds=2)
    ffn, _ = write_run(tmp_path / "ffn", FFN)
    out, figures = tmp_path / "out" / "report.md", tmp_path / "out" / "figures"
    assert main([bas, ffn, f"--out={out}", f"--figures={figures}"]) == 0
    assert capsys.readouterr().out.strip() == f"Report: {out}"
    names = sorted(os.listdir(figures))
    assert names == [
        "IEMOCAP_Fbank_3L-BAS_confusion.png",
        "IEMOCAP_Fbank_3L-BAS_theta_fold1.png",
        "IEMOCAP_Fbank_3L-BAS_theta_fold2.png",
        "IEMOCAP_Fbank_simple-FFN_confusion.png",
    ]
    for name in names:
        assert _is_png(figures / name)
    # One cell per class in the confusion matrix: 4 classes at 120 dpi on a 5.6-inch figure.
    assert matplotlib.image.imread(figures / names[0]).shape[:2] == (672, 672)
    report = out.read_text(encoding="utf-8")
    assert "[png](figures/IEMOCAP_Fbank_simple-FFN_confusion.png)" in report
    assert "[theta](figures/IEMOCAP_Fbank_3L-BAS_theta_fold2.png)" in report


def test_results_markdown_of_one_run_says_what_the_run_was(tmp_path):
    folder, _ = write_run(
        tmp_path / "run",
        model("transformer", num_layers=4, num_heads=8),
        upstream=hf_upstream(24, 1024),
        hparams_file="transformer_ssl.yaml",
    )
    results = json.load(
        open(os.path.join(folder, "results.json"), encoding="utf-8")
    )
    table = results_markdown(results).splitlines()
    assert table[0] == "### IEMOCAP - transformer_ssl.yaml"
    assert table[2] == (
        "Model: `transformer` (search=False, num_layers=4, num_heads=8, "
        "layer_selection=weighted_sum)."
    )
    assert table[4].startswith(
        "Upstream: `wavlm`, 24 layers of 1024 dims; 25 representation(s) of 1024 dims"
    )
    assert "content sha256 aaaaaaaaaaaa" in table[4]
    assert f"| fold1 | {results['folds']['fold1']['WA']:.4f} |" in table[12]
    assert "| mean +/- std |" in "\n".join(table)


def test_search_restarts_are_reported_with_the_metric_that_chose_them():
    from ser_modules.reports.run_report import restart_lines

    search = {
        "restarts": {
            "fold1": {
                "chosen": 2,
                "restarts": [
                    {
                        "restart": 1,
                        "seed": 7,
                        "architecture": ["msa", "ffn"],
                        "valid": {"UA": 0.9, "WF1": 0.4},
                    },
                    {
                        "restart": 2,
                        "seed": 8,
                        "architecture": ["ffn", "ffn"],
                        "valid": {"UA": 0.5, "WF1": 0.6},
                    },
                ],
            }
        }
    }
    text = "\n".join(restart_lines(search, "WF1"))
    assert (
        "| split | restart | seed | architecture | valid WF1 | kept |" in text
    )
    assert "| fold1 | 1 | 7 | msa -> ffn | 0.400 |  |" in text
    assert "| fold1 | 2 | 8 | ffn -> ffn | 0.600 | yes |" in text
    assert "| valid UA |" in "\n".join(restart_lines(search))
