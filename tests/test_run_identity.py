"""Specification of the run identity (ser_modules/run_identity.py): what a tiny recipe run
records in its results.json, and reports that depend on nothing else.

One tiny run of the transformer baseline on a random 2-layer WavLM, with an hparams file
and an upstream folder whose names lie about what they hold (``bas_hubert.yaml``,
``hubert-large``): the identity must say what was really run, and the report must not
change when both are moved and deleted afterwards.
"""

import hashlib
import json
import os
import shutil

import pytest
from prepare_helpers import REPO_ROOT
from recipe_helpers import read_results, run_in_process

from ser_modules.fingerprint import code_version, json_sha256
from ser_modules.mini_corpus import generate_mini_corpus
from ser_modules.reports.run_report import results_markdown
from ser_modules.reports.runs import collect_runs
from ser_modules.reports.tables import build_report, main
from ser_modules.run_identity import RESULTS_FORMAT
from ser_modules.upstreams import HuggingFaceUpstream
from ser_modules.upstreams.tiny import save_tiny_model

CUSTOM = "recipes/custom/train.py"
# The transformer baseline's hparams file for Hugging Face upstreams (one file per method
# once the per-upstream files are merged; the older per-upstream name otherwise).
TRANSFORMER_SSL = next(
    path
    for path in (
        "hparams/transformer_ssl.yaml",
        "hparams/transformer_wavlm.yaml",
    )
    if os.path.isfile(os.path.join(REPO_ROOT, path))
)
OPTIONS = {
    "number_of_epochs": 1,
    "batch_size": 4,
    "num_layers": 2,
    "num_heads": 2,
    "ffn_dim": 16,
    "crop_seconds": 0.9,
    "seed": 7,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``(output folder, hparams file, upstream folder)`` of a finished tiny run."""
    root = tmp_path_factory.mktemp("identity")
    corpus = str(root / "corpus")
    generate_mini_corpus(
        corpus,
        num_speakers=2,
        utterances_per_class=3,
        duration_range=(0.8, 1.2),
    )
    upstream = save_tiny_model(root / "models" / "hubert-large", kind="wavlm")
    hparams_file = str(root / "hparams" / "bas_hubert.yaml")
    os.makedirs(os.path.dirname(hparams_file))
    shutil.copyfile(os.path.join(REPO_ROOT, TRANSFORMER_SSL), hparams_file)
    output = str(root / "run")
    run_in_process(
        CUSTOM,
        hparams_file,
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.25",
        f"--ssl_source={upstream}",
        f"--output_folder={output}",
        *(f"--{key}={value}" for key, value in OPTIONS.items()),
    )
    return output, hparams_file, upstream


def test_results_json_is_marked_with_its_format(tiny_run):
    results = read_results(tiny_run[0])
    assert results["results_format"] == RESULTS_FORMAT == 2


def test_identity_names_the_dataset_hparams_file_seed_and_code(tiny_run):
    output, hparams_file, _ = tiny_run
    identity = read_results(output)["identity"]
    assert identity["dataset"] == "custom"
    with open(hparams_file, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    assert identity["hparams_file"] == {
        "path": hparams_file,
        "name": "bas_hubert.yaml",
        "sha256": digest,
    }
    assert identity["seed"] == 7
    assert identity["code"] == code_version()
    for key, value in OPTIONS.items():
        assert identity["overrides"][key] == value, key
        assert identity["hparams"][key] == value, key


def test_identity_records_the_model_that_was_trained(tiny_run):
    model = read_results(tiny_run[0])["identity"]["model"]
    assert model["downstream_model"] == "transformer"
    assert model["search"] is False
    assert (model["num_layers"], model["num_heads"], model["ffn_dim"]) == (
        2,
        2,
        16,
    )
    assert model["layer_selection"] == "weighted_sum"
    assert model["pooling"] == "mean"


def test_identity_records_the_upstream_by_content(tiny_run):
    _, _, folder = tiny_run
    upstream = read_results(tiny_run[0])["identity"]["upstream"]
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert upstream["kind"] == upstream["model_type"] == "wavlm"
    assert upstream["num_hidden_layers"] == config["num_hidden_layers"]
    assert upstream["hidden_size"] == upstream["width"] == config["hidden_size"]
    layers = config["num_hidden_layers"] + 1
    assert upstream["layers_used"] == list(range(layers))
    assert upstream["num_representations"] == layers
    assert upstream["source"] == os.path.abspath(folder)
    # The same files give the same digest wherever they are: it leaves the path out.
    rebuilt = HuggingFaceUpstream(folder).identity()
    del rebuilt["source"]
    assert upstream["content_sha256"] == json_sha256(rebuilt)


def test_identity_records_the_protocol(tiny_run):
    output = tiny_run[0]
    protocol = read_results(output)["identity"]["protocol"]
    assert protocol["selection_set"] == "valid"
    assert protocol["selection_metric"] == "UA"
    assert protocol["crop_seconds"] == protocol["eval_crop_seconds"] == 0.9
    preparation = protocol["preparation"]
    # Given on the command line, and the preparation's defaults.
    assert (preparation["split"], preparation["valid_fraction"]) == (
        "stratified",
        0.25,
    )
    assert (preparation["test_fraction"], preparation["seed"]) == (0.2, 1234)
    assert "data_folder" not in preparation
    assert protocol["splits"] == ["main"]
    for part, digest in protocol["manifests_sha256"]["main"].items():
        with open(
            os.path.join(output, "prepared", f"{part}.csv"), "rb"
        ) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest, part


def test_results_md_names_the_model_and_upstream(tiny_run):
    text = results_markdown(read_results(tiny_run[0]))
    assert "Model: `transformer` (" in text and "num_layers=2" in text
    assert "Upstream: `wavlm`, 2 layers of 32 dims" in text


def test_reports_do_not_change_when_the_upstream_and_hparams_file_are_gone(
    tiny_run, tmp_path, capsys
):
    output, hparams_file, upstream = tiny_run
    out = str(tmp_path / "report.md")

    def report():
        runs, _ = collect_runs([output])
        assert main([output, f"--out={out}"]) == 0
        with open(out, encoding="utf-8") as handle:
            text = handle.read()
        return (runs[0].upstream, runs[0].model), build_report([output]), text

    before = report()
    assert before[0] == ("WavLM (2 layers, 32 dims)", "2L-baseline")
    # Moved, then deleted: the report reads nothing but results.json.
    moved = str(tmp_path / "elsewhere")
    shutil.move(upstream, moved)
    shutil.move(hparams_file, str(tmp_path / "moved.yaml"))
    assert report() == before
    shutil.rmtree(moved)
    os.remove(str(tmp_path / "moved.yaml"))
    os.remove(os.path.join(output, "hyperparams.yaml"))
    assert report() == before
    capsys.readouterr()


def test_a_bas_run_records_what_its_theta_stepped_on(tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    from ser_modules.reports.run_report import identity_lines
    from ser_modules.run_identity import model_record

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(
        os.path.join(root, "hparams", "bas_fbank.yaml"), encoding="utf-8"
    ) as f:
        hparams = load_hyperpyyaml(
            f,
            {
                "data_folder": "x",
                "output_folder": str(tmp_path),
                "theta_held_out": True,
                "theta_split": "speakers",
            },
        )
    record = model_record(hparams)
    assert record["search"] is True
    assert (record["theta_held_out"], record["theta_split"]) == (
        True,
        "speakers",
    )
    # A fixed-architecture run of the same file records no search settings.
    assert "theta_split" not in model_record({**hparams, "search": False})
    model_line = identity_lines(
        {
            "model": record,
            "upstream": {
                "kind": "fbank",
                "num_representations": 1,
                "width": 80,
                "layers_used": [0],
                "content_sha256": "0" * 64,
            },
            "hparams_file": {"name": "bas_fbank.yaml", "sha256": "0" * 64},
            "seed": 1,
            "code": {"package": "0", "sources_sha256": "0" * 64},
        }
    )[0]
    assert "theta_held_out=True, theta_split=speakers" in model_line
