"""The training core of every emotion-classification recipe: one Brain, one data pipeline.

``EmotionBrain`` trains a downstream model on frozen upstream features, read either from
the feature cache (``batch.feats``, the default) or computed on the fly from the waveform
(``batch.sig``). Everything dataset-specific lives in the preparation scripts and in the
defaults each ``recipes/<DATASET>/train.py`` passes to :mod:`ser_modules.recipe`.
"""

import json
import logging
import os
import random
import shutil

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from torch.nn import DataParallel as DP
from torch.nn.parallel import DistributedDataParallel as DDP

from ser_modules.audio import crop_or_pad, load_audio, seconds_to_samples
from ser_modules.manifest import DATA_ROOT, atomic_write_text
from ser_modules.metrics import classification_scores

logger = logging.getLogger(__name__)


def unwrap_module(module):
    """The module itself when ``DistributedDataParallel`` (or ``DataParallel``) wraps it.

    Brain wraps every trainable module for multi-process training; the wrapper forwards
    calls but not the module's own methods (``set_temperature``, ``architecture_logits``).
    """
    return module.module if isinstance(module, (DDP, DP)) else module


@register_checkpoint_hooks
class RandomState:
    """Checkpoints the Python, NumPy and torch random generators.

    With it in the checkpointer's recoverables, a run killed after an (intra-epoch)
    checkpoint replays exactly the same dropout masks, Gumbel noise and random crops after
    recovery, so it ends with the same numbers as an uninterrupted run.
    """

    @mark_as_saver
    def _save(self, path):
        if not sb.utils.distributed.if_main_process():
            return  # save hooks run on every process: one writer per file
        torch.save(
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            path,
        )

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del end_of_epoch
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])


def loader_generator(seed, stage=None):
    """A seeded ``torch.Generator`` for a DataLoader, so that iterating it leaves the global RNG alone.

    Every ``iter(DataLoader)`` draws a worker base seed from the loader's generator, or
    from the global torch RNG when it has none. A run recovered inside an epoch creates
    its iterator after :class:`RandomState` restored the global RNG, where the
    uninterrupted run had created it before the checkpoint: with the global RNG that extra
    draw would shift every later dropout mask and Gumbel sample.
    """
    offset = {sb.Stage.TRAIN: 1, sb.Stage.VALID: 2, sb.Stage.TEST: 3}.get(stage, 4)
    return torch.Generator().manual_seed(int(seed) * 10 + offset)


COMPLETION_RECORD = "completion"  # recoverable name: <checkpoint>/completion.ckpt


@register_checkpoint_hooks
class CheckpointCompletion:
    """The last file of every checkpoint: the size of each file written before it.

    SpeechBrain writes ``CKPT.yaml`` first and the parameter files after it, so a run
    killed while saving (likely with ``ckpt_interval_steps=1``) leaves a checkpoint that
    looks valid but holds missing or truncated files, and recovering it fails.
    :func:`remove_incomplete_checkpoints` deletes the checkpoints whose record is missing
    or does not match the files, before the Brain recovers.
    """

    @mark_as_saver
    def _save(self, path):
        # SpeechBrain calls save hooks on every process, and some of them write files on
        # every process: record the sizes once all of them are done.
        sb.utils.distributed.ddp_barrier()
        if not sb.utils.distributed.if_main_process():
            return
        folder, own_name = os.path.split(path)
        sizes = {
            name: os.path.getsize(os.path.join(folder, name))
            for name in sorted(os.listdir(folder))
            if name != own_name and not name.startswith(".")
        }
        atomic_write_text(path, json.dumps(sizes) + "\n")

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del path, end_of_epoch  # nothing to restore: the file only vouches for the others


def checkpoint_is_complete(folder):
    """Whether a checkpoint folder holds every file its completion record lists, in full."""
    record_path = os.path.join(folder, COMPLETION_RECORD + ".ckpt")
    try:
        with open(record_path, encoding="utf-8") as handle:
            sizes = json.load(handle)
    except (OSError, ValueError):
        return False
    return "CKPT.yaml" in sizes and all(
        os.path.isfile(os.path.join(folder, name)) and os.path.getsize(os.path.join(folder, name)) == size
        for name, size in sizes.items()
    )


def remove_incomplete_checkpoints(checkpointer):
    """Delete the checkpoints a crash cut short (main process; the others wait).

    Recovery then falls back to the latest complete checkpoint, which every kill leaves:
    SpeechBrain deletes older checkpoints only after saving the new one.
    """
    if checkpointer is None:
        return
    if sb.utils.distributed.if_main_process() and os.path.isdir(checkpointer.checkpoints_dir):
        for name in sorted(os.listdir(checkpointer.checkpoints_dir)):
            folder = os.path.join(checkpointer.checkpoints_dir, name)
            if name.startswith("CKPT") and os.path.isdir(folder) and not checkpoint_is_complete(folder):
                logger.warning(
                    "Removing the checkpoint %s: it was cut short by an interruption (files "
                    "missing or truncated). Training resumes from the previous checkpoint.",
                    folder,
                )
                shutil.rmtree(folder)
    sb.utils.distributed.ddp_barrier()


class EmotionBrain(sb.Brain):
    """Frozen upstream features -> layer combiner -> downstream model -> cross-entropy.

    Expected ``modules``: ``layer_combiner`` ((B, nL, T, D) -> (B, T, D)), ``downstream``
    (``(feats, lens) -> logits``), when features are not cached, ``upstream``, and
    optionally ``input_norm`` (``(frames, lens, epoch) -> frames``, applied after the
    layer combiner).
    Expected hparams: ``selection_metric`` (WA, UA or WF1), ``train_logger``,
    ``lr_scheduler`` (a ``torch.optim.lr_scheduler`` factory stepped once per epoch) and
    ``num_classes``.
    """

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's dataloader, with its own seeded generator (see :func:`loader_generator`)."""
        loader_kwargs.setdefault("generator", loader_generator(getattr(self.hparams, "seed", 0), stage))
        return super().make_dataloader(dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs)

    def compute_forward(self, batch, stage):
        """Return logits (B, C) and the relative feature lengths (B,)."""
        batch = batch.to(self.device)
        feats, feat_lens = self.upstream_features(batch)  # (B, nL, T, D), (B,)
        frames = self.modules.layer_combiner(feats)  # (B, T, D)
        if "input_norm" in self.modules:
            # e.g. SpeechBrain's global InputNormalization: statistics gathered while
            # training the first epoch(s), then frozen (and checkpointed).
            frames = self.modules.input_norm(frames, feat_lens, epoch=self.hparams.epoch_counter.current)
        logits = self.modules.downstream(frames, feat_lens)  # (B, C)
        return logits, feat_lens

    def upstream_features(self, batch):
        """Layer-wise frame features of a batch: cached (default) or computed now."""
        if hasattr(batch, "feats"):
            feats, feat_lens = batch.feats  # (B, T, nL, D) as cached: time first for padding
            return feats.permute(0, 2, 1, 3).float(), feat_lens
        wavs, wav_lens = batch.sig  # (B, T_samples)
        with torch.no_grad():
            feats, feat_lens = self.modules.upstream(wavs, wav_lens)  # (B, nL, T, D)
        return feats.float(), feat_lens

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy; collects predictions for the stage metrics."""
        logits, _ = predictions
        targets = batch.emo_encoded.data.reshape(-1)  # (B,)
        loss = F.cross_entropy(logits.float(), targets)
        if stage != sb.Stage.TRAIN:
            self.stage_ids.extend(batch.id)
            self.stage_targets.extend(targets.tolist())
            self.stage_predictions.extend(logits.argmax(dim=-1).tolist())
            self.stage_probabilities.extend(torch.softmax(logits.float(), dim=-1).tolist())
        return loss

    def on_fit_start(self):
        """Drop checkpoints cut short by a crash, recover, then register the completion record.

        The record is registered after every other recoverable (the dataloader, optimiser
        and scheduler are added before this point), so it is the last file written.
        """
        remove_incomplete_checkpoints(self.checkpointer)
        super().on_fit_start()
        if self.checkpointer is not None:
            self.checkpointer.recoverables.pop(COMPLETION_RECORD, None)
            self.checkpointer.add_recoverable(COMPLETION_RECORD, CheckpointCompletion())

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Drop checkpoints cut short by a crash before loading the selected one."""
        remove_incomplete_checkpoints(self.checkpointer)
        super().on_evaluate_start(max_key=max_key, min_key=min_key)

    def init_optimizers(self):
        """Optimise only trainable parameters (the upstream is frozen) and add the scheduler."""
        if self.opt_class is None:
            return
        trainable = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(trainable)
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.lr_scheduler = self.hparams.lr_scheduler(self.optimizer)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("lr_scheduler", self.lr_scheduler)

    def on_stage_start(self, stage, epoch=None):
        """Reset the prediction buffers; keep a frozen upstream in eval mode."""
        self.stage_ids, self.stage_targets = [], []
        self.stage_predictions, self.stage_probabilities = [], []
        if "upstream" in self.modules:
            self.modules.upstream.eval()

    def stage_scores(self):
        """WA / UA / WF1 of the predictions collected in this stage."""
        labels = list(range(self.hparams.num_classes))
        return classification_scores(self.stage_targets, self.stage_predictions, labels=labels)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, step the scheduler, checkpoint on validation, keep test outcomes."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        scores = self.stage_scores()
        stats = {"loss": stage_loss, "WA": scores["WA"], "UA": scores["UA"], "WF1": scores["WF1"]}
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.lr_scheduler.step()
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            meta = {key: float(value) for key, value in stats.items()}
            meta["epoch"] = float(epoch)
            self.checkpointer.save_and_keep_only(
                meta=meta, max_keys=[self.hparams.selection_metric], num_to_keep=1
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            self.test_outcome = {
                "scores": scores,
                "loss": float(stage_loss),
                "ids": list(self.stage_ids),
                "targets": list(self.stage_targets),
                "predictions": list(self.stage_predictions),
                "probabilities": list(self.stage_probabilities),
            }


def build_label_encoder(csv_paths, path):
    """A label encoder over every label of the given manifests, in sorted order.

    Sorting (rather than order of appearance) gives every fold the same class indices.
    """
    from ser_modules.manifest import read_csv

    labels = sorted({row["emo"] for csv_path in csv_paths for row in read_csv(csv_path)})
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.update_from_iterable(labels)
    encoder.save(path)
    return encoder


def warn_about_short_utterances(dataset, csv_path, min_samples, sample_rate):
    """Log how many utterances of a manifest are shorter than one upstream frame."""
    if not min_samples or min_samples <= 1:
        return
    short = [
        utt_id for utt_id, row in dataset.data.items()
        if row.get("duration") not in (None, "") and float(row["duration"]) * sample_rate < min_samples
    ]
    if short:
        logger.warning(
            "%d utterances of %s are shorter than the %d samples the upstream needs for one "
            "frame: they are zero-padded to it (%s).",
            len(short), csv_path, min_samples, ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""),
        )


def build_datasets(csv_paths, replacements, label_encoder, feature_caches=None, crop_seconds=None,
                   train_crop_mode="first", sample_rate=16000, eval_crop_seconds=None, min_samples=None):
    """SpeechBrain datasets for the ``train`` / ``valid`` / ``test`` manifests of one split.

    Arguments
    ---------
    csv_paths : dict
        ``{"train": csv, "valid": csv, "test": csv}``.
    replacements : dict
        ``{"data_root": ..., "prep_root": ...}`` for the ``$`` placeholders of the manifests.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        Maps ``emo`` to ``emo_encoded``.
    feature_caches : dict, optional
        ``{"train": FeatureCache, "eval": FeatureCache}``: read ``feats`` (T, nL, D) from the
        caches instead of audio. Without it, each item provides the waveform ``sig``.
    crop_seconds : float, optional
        Crop of the training waveforms (the papers: first N seconds).
    train_crop_mode : str
        ``"first"`` or ``"random"`` (augmentation, on-the-fly features only).
    sample_rate : int
        Rate the audio is resampled to.
    eval_crop_seconds : float, optional
        Crop of the validation and test waveforms (default: ``crop_seconds``), as the
        evaluation cache uses.
    min_samples : int, optional
        Waveforms shorter than this (the samples one upstream frame needs) are
        zero-padded to it, as the feature cache does.

    Returns
    -------
    dict of DynamicItemDataset
    """
    if feature_caches is not None and train_crop_mode != "first":
        raise ValueError(
            f"train_crop_mode={train_crop_mode!r} needs use_cache=False: cached features are "
            "extracted once from the first crop_seconds of each utterance."
        )
    if eval_crop_seconds is None:
        eval_crop_seconds = crop_seconds
    datasets = {}
    for name, csv_path in csv_paths.items():
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path, replacements=replacements)
        keys = ["id", "emo_encoded"]
        if feature_caches is not None:
            cache = feature_caches["train" if name == "train" else "eval"]

            @sb.utils.data_pipeline.takes("id")
            @sb.utils.data_pipeline.provides("feats")
            def feature_pipeline(utterance_id, cache=cache):
                return cache.load(utterance_id)  # (T, nL, D)

            dataset.add_dynamic_item(feature_pipeline)
            keys.append("feats")
        else:
            crop_mode = train_crop_mode if name == "train" else "first"
            num_samples = seconds_to_samples(crop_seconds if name == "train" else eval_crop_seconds, sample_rate)
            warn_about_short_utterances(dataset, csv_path, min_samples, sample_rate)

            @sb.utils.data_pipeline.takes("wav")
            @sb.utils.data_pipeline.provides("sig")
            def audio_pipeline(path, crop_mode=crop_mode, num_samples=num_samples):
                if DATA_ROOT in path or "$prep_root" in path:
                    raise ValueError(f"Unresolved placeholder in manifest path {path}")
                waveform = load_audio(path, sample_rate)
                return crop_or_pad(waveform, num_samples, mode=crop_mode, min_samples=min_samples)

            dataset.add_dynamic_item(audio_pipeline)
            keys.append("sig")

        @sb.utils.data_pipeline.takes("emo")
        @sb.utils.data_pipeline.provides("emo_encoded")
        def label_pipeline(emotion):
            return torch.LongTensor([label_encoder.encode_label(emotion)])

        dataset.add_dynamic_item(label_pipeline)
        dataset.set_output_keys(keys)
        datasets[name] = dataset
    return datasets
