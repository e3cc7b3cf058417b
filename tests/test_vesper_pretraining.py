"""Specification of Vesper pretraining end to end (recipes/LSSED/pretrain.py, ser_modules/vesper/pretraining.py).

A tiny random WavLM teacher (4 layers, 32 dims) and a 32-utterance generated corpus stand
in for WavLM Large and LSSED; ``hparams/vesper_tiny_pretrain.yaml`` is the recipe under
test. That exported layer outputs equal the student's own is specified in
``test_vesper_export.py``.
"""

import os
import re

import pytest
import torch
from recipe_helpers import checkpoint_metas, run_child, run_in_process
from safetensors.torch import load_file
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from transformers import WavLMModel

from ser_modules.audio import crop_or_pad, load_audio, seconds_to_samples
from ser_modules.feature_cache import FeatureCache
from ser_modules.manifest import read_csv
from ser_modules.mini_corpus import generate_mini_corpus
from ser_modules.upstreams.tiny import save_tiny_model
from ser_modules.vesper.encoder import VesperEncoder
from ser_modules.vesper.pretraining import TeacherTargets, VesperPretrainBrain

PRETRAIN = "recipes/LSSED/pretrain.py"
EPOCHS = 3
TRAIN_LOSS = re.compile(r"epoch: (\d+),.* train loss: ([0-9.e+-]+)")


class Interrupted(RuntimeError):
    """Stands for the run being killed."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The corpus (2 speakers x 4 emotions x 4 utterances, 1.5-3.5 s) and the tiny teacher."""
    root = tmp_path_factory.mktemp("vesper_pretraining")
    corpus = str(root / "corpus")
    generate_mini_corpus(corpus, num_speakers=2, utterances_per_class=4)
    teacher = save_tiny_model(
        root / "teacher", kind="wavlm", num_layers=4, hidden_size=32
    )
    return {"root": root, "corpus": corpus, "teacher": teacher}


def pretrain_arguments(workspace, output_folder, *extra):
    """The recipe's command line: 3 epochs of 8 batches, an intra-epoch checkpoint every 3 batches."""
    return [
        "hparams/vesper_tiny_pretrain.yaml",
        f"--data_folder={workspace['corpus']}",
        f"--teacher_source={workspace['teacher']}",
        f"--output_folder={output_folder}",
        f"--number_of_epochs={EPOCHS}",
        "--batch_size=4",
        "--valid_fraction=0.1",
        "--ckpt_interval_steps=3",
        *extra,
    ]


def train_losses(output_folder):
    """``{epoch: train loss}`` from the run's train_log.txt."""
    with open(
        os.path.join(output_folder, "train_log.txt"), encoding="utf-8"
    ) as handle:
        return {
            int(epoch): float(loss)
            for epoch, loss in TRAIN_LOSS.findall(handle.read())
        }


def last_epoch_meta(output_folder):
    """Meta of the run's end-of-epoch checkpoint: full-precision losses of the last epoch."""
    metas = [
        meta
        for meta in checkpoint_metas(os.path.join(output_folder, "save"))
        if "train_loss" in meta
    ]
    return max(metas, key=lambda meta: meta["epoch"])


@pytest.fixture(scope="module")
def reference_run(workspace):
    """An uninterrupted tiny pretraining run: its output folder."""
    output_folder = workspace["root"] / "reference"
    run_in_process(PRETRAIN, *pretrain_arguments(workspace, output_folder))
    return output_folder


def test_pretraining_lowers_the_training_loss(reference_run):
    losses = train_losses(reference_run)
    assert sorted(losses) == list(range(1, EPOCHS + 1))
    assert losses[EPOCHS] < 0.9 * losses[1], losses


def test_pretraining_exports_the_student_as_a_wavlm_folder(reference_run):
    model = WavLMModel.from_pretrained(reference_run / "hf_export")
    assert (
        model.config.num_hidden_layers == 2
    )  # the tiny student: half of the 4-layer teacher
    assert os.path.isfile(
        reference_run / "hf_export" / "preprocessor_config.json"
    )


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(
    workspace, reference_run, monkeypatch
):
    output_folder = workspace["root"] / "interrupted"
    save_folder = output_folder / "save"
    fit_batch = VesperPretrainBrain.fit_batch

    def fit_batch_then_crash(self, batch):
        # Epoch 2, batch 5: the intra-epoch checkpoint after batch 3 is the latest one.
        if self.hparams.epoch_counter.current == 2 and self.step == 5:
            raise Interrupted
        return fit_batch(self, batch)

    monkeypatch.setattr(VesperPretrainBrain, "fit_batch", fit_batch_then_crash)
    with pytest.raises(Interrupted):
        run_in_process(PRETRAIN, *pretrain_arguments(workspace, output_folder))
    monkeypatch.undo()
    intra_epoch = [
        meta
        for meta in checkpoint_metas(save_folder)
        if meta.get(INTRA_EPOCH_CKPT_FLAG)
    ]
    assert intra_epoch, (
        "the interrupted run left no intra-epoch checkpoint to resume from"
    )
    assert not os.path.isdir(output_folder / "hf_export")

    run_in_process(PRETRAIN, *pretrain_arguments(workspace, output_folder))

    assert train_losses(output_folder) == train_losses(reference_run)
    resumed_meta, reference_meta = (
        last_epoch_meta(output_folder),
        last_epoch_meta(reference_run),
    )
    assert (resumed_meta["train_loss"], resumed_meta["loss"]) == (
        reference_meta["train_loss"],
        reference_meta["loss"],
    )
    resumed = load_file(output_folder / "hf_export" / "model.safetensors")
    reference = load_file(reference_run / "hf_export" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


def test_a_run_killed_while_saving_a_checkpoint_resumes_with_a_plain_rerun(
    workspace, reference_run, monkeypatch
):
    # The kill hits while SpeechBrain writes the second intra-epoch checkpoint of epoch 2:
    # CKPT.yaml was created but is still empty, the brain state was never written.
    from speechbrain.utils import checkpoints

    output_folder = workspace["root"] / "cut_save"
    saver = checkpoints.DEFAULT_SAVE_HOOKS[VesperPretrainBrain]

    def save_then_die(brain, path):
        if brain.hparams.epoch_counter.current == 2 and brain.step == 6:
            open(os.path.join(os.path.dirname(path), "CKPT.yaml"), "w").close()
            raise Interrupted
        return saver(brain, path)

    monkeypatch.setitem(
        checkpoints.DEFAULT_SAVE_HOOKS, VesperPretrainBrain, save_then_die
    )
    with pytest.raises(Interrupted):
        run_in_process(PRETRAIN, *pretrain_arguments(workspace, output_folder))
    monkeypatch.undo()
    cut = [
        name
        for name in os.listdir(output_folder / "save")
        if os.path.getsize(output_folder / "save" / name / "CKPT.yaml") == 0
    ]
    assert cut, "the simulated kill left no cut checkpoint"

    run_in_process(PRETRAIN, *pretrain_arguments(workspace, output_folder))

    assert not os.path.isdir(output_folder / "save" / cut[0])
    assert train_losses(output_folder) == train_losses(reference_run)
    resumed = load_file(output_folder / "hf_export" / "model.safetensors")
    reference = load_file(reference_run / "hf_export" / "model.safetensors")
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


def test_distributed_pretraining_on_cpu_with_gloo_exports_the_student(
    workspace,
):
    output_folder = workspace["root"] / "ddp"
    output = run_child(
        PRETRAIN,
        *pretrain_arguments(
            workspace,
            output_folder,
            "--number_of_epochs=1",
            "--distributed_backend=gloo",
        ),
        launcher=(
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
        ),
    )
    assert f"to {output_folder / 'hf_export'}" in output
    assert (
        WavLMModel.from_pretrained(
            output_folder / "hf_export"
        ).config.num_hidden_layers
        == 2
    )
    assert list(train_losses(output_folder)) == [1]


def test_bf16_autocast_pretraining_runs_on_cpu(workspace):
    output_folder = workspace["root"] / "bf16"
    run_in_process(
        PRETRAIN,
        *pretrain_arguments(
            workspace, output_folder, "--number_of_epochs=1", "--precision=bf16"
        ),
    )
    losses = train_losses(output_folder)
    assert list(losses) == [1] and 0 < losses[1] < float("inf")
    assert os.path.isfile(output_folder / "hf_export" / "model.safetensors")


def test_cached_teacher_targets_equal_the_online_targets(workspace, tmp_path):
    teacher = TeacherTargets(
        VesperEncoder.from_wavlm(workspace["teacher"]),
        source=workspace["teacher"],
    )
    rows = read_csv(os.path.join(workspace["corpus"], "labels.csv"))[:3]
    rows = [
        {"ID": f"utt{i}", "wav": os.path.join(workspace["corpus"], row["path"])}
        for i, row in enumerate(rows)
    ]
    cache = FeatureCache(
        tmp_path, teacher, crop_seconds=3.0, dtype=torch.float32
    )
    cache.build(rows, batch_size=2, progressbar=False)
    for row in rows:
        wav = crop_or_pad(
            load_audio(row["wav"]), seconds_to_samples(3.0), mode="first"
        ).unsqueeze(0)  # (1, S)
        online, _ = teacher(wav, torch.ones(1))  # (1, 2, T, D)
        cached = cache.load(row["ID"])  # (T, 2, D)
        assert cached.shape == online[0].transpose(0, 1).shape
        assert (cached - online[0].transpose(0, 1)).abs().max() < 1e-5, row[
            "ID"
        ]


def test_pretraining_on_cached_targets_matches_online_targets(workspace):
    first_crop = ("--number_of_epochs=1", "--train_crop_mode=first")
    online = workspace["root"] / "online_first_crop"
    cached = workspace["root"] / "cached_targets"
    run_in_process(
        PRETRAIN, *pretrain_arguments(workspace, online, *first_crop)
    )
    run_in_process(
        PRETRAIN,
        *pretrain_arguments(
            workspace,
            cached,
            *first_crop,
            "--precompute_teacher_targets=True",
            "--target_cache_dtype=float32",
        ),
    )
    assert os.listdir(cached / "teacher_targets")
    assert last_epoch_meta(cached)["train_loss"] == pytest.approx(
        last_epoch_meta(online)["train_loss"], rel=1e-5
    )


def test_precomputed_targets_refuse_random_crops(workspace):
    output_folder = workspace["root"] / "random_crop_cache"
    with pytest.raises(ValueError, match="train_crop_mode=first"):
        run_in_process(
            PRETRAIN,
            *pretrain_arguments(
                workspace, output_folder, "--precompute_teacher_targets=True"
            ),
        )


def test_the_exported_student_trains_the_emotion_classifier(
    workspace, reference_run
):
    output_folder = workspace["root"] / "classifier"
    run_in_process(
        "recipes/custom/train.py",
        "hparams/superb_ssl.yaml",
        f"--data_folder={workspace['corpus']}",
        "--labels_csv=labels.csv",
        "--split=stratified",
        "--valid_fraction=0.2",
        f"--ssl_source={reference_run / 'hf_export'}",
        "--number_of_epochs=1",
        f"--output_folder={output_folder}",
    )
    assert os.path.isfile(output_folder / "results.json")
