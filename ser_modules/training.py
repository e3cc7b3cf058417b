"""The training core of every emotion-classification recipe: one Brain, one data pipeline.

``EmotionBrain`` trains a downstream model on frozen upstream features, read either from
the feature cache (``batch.feats``, the default) or computed on the fly from the waveform
(``batch.sig``). Each ``recipes/<DATASET>/train.py`` builds it with the objects of its
hparams; everything dataset-specific lives in the preparation scripts and in the defaults
of each ``train.py``.
"""

import logging

import speechbrain as sb
import torch
import torch.nn.functional as F

from ser_modules.audio import crop_or_pad, load_audio, seconds_to_samples
from ser_modules.feature_cache import NonFiniteFeaturesError
from ser_modules.manifest import DATA_ROOT
from ser_modules.metrics import classification_scores

# The exact-resume machinery lives in ser_modules.resume (shared with Vesper pretraining).
from ser_modules.resume import (
    loader_generator,
    register_completion_record,
    remove_incomplete_checkpoints,
)

logger = logging.getLogger(__name__)


class EmotionBrain(sb.Brain):
    """Frozen upstream features -> layer combiner -> downstream model -> cross-entropy.

    Expected ``modules``: ``layer_combiner`` ((B, nL, T, D) -> (B, T, D)), ``downstream``
    (``(feats, lens) -> logits``), when features are not cached, ``upstream``, and
    optionally ``input_norm`` (``(frames, lens, epoch) -> frames``, applied after the
    layer combiner).
    Expected hparams: ``selection_metric`` (WA, UA or WF1), ``num_classes``, ``seed``
    and ``epoch_counter``.

    Arguments
    ---------
    *args, **kwargs
        Those of ``sb.Brain`` (``modules``, ``opt_class``, ``hparams``, ``run_opts``,
        ``checkpointer``).
    lr_scheduler : callable
        ``optimizer -> torch.optim.lr_scheduler`` factory, stepped once per epoch.
    train_logger : speechbrain.utils.train_logger.TrainLogger
        Where the epochs' statistics are logged.
    """

    def __init__(self, *args, lr_scheduler, train_logger, **kwargs):
        super().__init__(*args, **kwargs)
        self.scheduler_class = lr_scheduler
        self.train_logger = train_logger

    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """SpeechBrain's dataloader, with its own seeded generator (see :func:`loader_generator`)."""
        loader_kwargs.setdefault(
            "generator",
            loader_generator(getattr(self.hparams, "seed", 0), stage),
        )
        return super().make_dataloader(
            dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs
        )

    def compute_forward(self, batch, stage):
        """Return logits (B, C) and the relative feature lengths (B,)."""
        batch = batch.to(self.device)
        feats, feat_lens = self.upstream_features(batch)  # (B, nL, T, D), (B,)
        self.check_finite(feats, batch, "features")
        frames = self.modules.layer_combiner(feats)  # (B, T, D)
        if "input_norm" in self.modules:
            # e.g. SpeechBrain's global InputNormalization: statistics gathered while
            # training the first epoch(s), then frozen (and checkpointed).
            frames = self.modules.input_norm(
                frames, feat_lens, epoch=self.hparams.epoch_counter.current
            )
        logits = self.modules.downstream(frames, feat_lens)  # (B, C)
        self.check_finite(logits, batch, "logits")
        return logits, feat_lens

    @staticmethod
    def check_finite(values, batch, what):
        """Stop with the utterances (and files) named when ``values`` (B, ...) hold NaN or inf.

        A NaN would otherwise be argmax-ed into class 0, written into the normaliser's
        statistics, or averaged into every later step.
        """
        finite = torch.isfinite(values.detach()).flatten(1).all(dim=1)  # (B,)
        if bool(finite.all()):
            return
        files = getattr(batch, "wav", None) or [None] * len(batch.id)
        named = [
            f"{utt_id} ({path})" if path else utt_id
            for utt_id, path, ok in zip(batch.id, files, finite.tolist())
            if not ok
        ]
        raise NonFiniteFeaturesError(
            f"NaN or infinite {what} for the utterances {', '.join(named)}: check those audio files "
            "(out-of-range samples) and remove them from the manifest or re-extract them."
        )

    def upstream_features(self, batch):
        """Layer-wise frame features of a batch: cached (default) or computed now."""
        if hasattr(batch, "feats"):
            feats, feat_lens = (
                batch.feats
            )  # (B, T, nL, D) as cached: time first for padding
            return feats.permute(0, 2, 1, 3).float(), feat_lens
        wavs, wav_lens = batch.sig  # (B, T_samples)
        with torch.no_grad():
            feats, feat_lens = self.modules.upstream(
                wavs, wav_lens
            )  # (B, nL, T, D)
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
            self.stage_probabilities.extend(
                torch.softmax(logits.float(), dim=-1).tolist()
            )
        return loss

    def on_fit_start(self):
        """Drop checkpoints cut short by a crash, recover, then register the completion record.

        The record is registered after every other recoverable (the dataloader, optimiser
        and scheduler are added before this point), so it is the last file written.
        """
        remove_incomplete_checkpoints(self.checkpointer)
        super().on_fit_start()
        register_completion_record(self.checkpointer)

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
        self.lr_scheduler = self.scheduler_class(self.optimizer)
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
        return classification_scores(
            self.stage_targets, self.stage_predictions, labels=labels
        )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, step the scheduler, checkpoint on validation, keep test outcomes."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        scores = self.stage_scores()
        stats = {
            "loss": stage_loss,
            "WA": scores["WA"],
            "UA": scores["UA"],
            "WF1": scores["WF1"],
        }
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.lr_scheduler.step()
            self.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            meta = {key: float(value) for key, value in stats.items()}
            meta["epoch"] = float(epoch)
            self.checkpointer.save_and_keep_only(
                meta=meta,
                max_keys=[self.hparams.selection_metric],
                num_to_keep=1,
            )
        else:
            self.train_logger.log_stats(
                stats_meta={"epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
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

    labels = sorted(
        {row["emo"] for csv_path in csv_paths for row in read_csv(csv_path)}
    )
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.update_from_iterable(labels)
    encoder.save(path)
    return encoder


def warn_about_short_utterances(dataset, csv_path, min_samples, sample_rate):
    """Log how many utterances of a manifest are shorter than one upstream frame."""
    if not min_samples or min_samples <= 1:
        return
    short = [
        utt_id
        for utt_id, row in dataset.data.items()
        if row.get("duration") not in (None, "")
        and float(row["duration"]) * sample_rate < min_samples
    ]
    if short:
        logger.warning(
            "%d utterances of %s are shorter than the %d samples the upstream needs for one "
            "frame: they are zero-padded to it (%s).",
            len(short),
            csv_path,
            min_samples,
            ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""),
        )


def build_datasets(
    csv_paths,
    replacements,
    label_encoder,
    feature_caches=None,
    crop_seconds=None,
    train_crop_mode="first",
    sample_rate=16000,
    eval_crop_seconds=None,
    min_samples=None,
):
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
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_path, replacements=replacements
        )
        keys = ["id", "wav", "emo_encoded"]  # wav: named in errors
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
            num_samples = seconds_to_samples(
                crop_seconds if name == "train" else eval_crop_seconds,
                sample_rate,
            )
            warn_about_short_utterances(
                dataset, csv_path, min_samples, sample_rate
            )

            @sb.utils.data_pipeline.takes("wav")
            @sb.utils.data_pipeline.provides("sig")
            def audio_pipeline(
                path, crop_mode=crop_mode, num_samples=num_samples
            ):
                if DATA_ROOT in path or "$prep_root" in path:
                    raise ValueError(
                        f"Unresolved placeholder in manifest path {path}"
                    )
                waveform = load_audio(path, sample_rate)
                return crop_or_pad(
                    waveform,
                    num_samples,
                    mode=crop_mode,
                    min_samples=min_samples,
                )

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
