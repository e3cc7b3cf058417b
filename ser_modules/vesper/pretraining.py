"""Vesper pretraining: a SpeechBrain Brain that distils WavLM Large into Vesper-N.

One step (paper III-B; ``recipes/LSSED/README.md``, "Design decisions")::

    waveform -> frozen CNN (once, shared by teacher and student)
      -> teacher (inference mode): raw outputs of layers M/2 and M        [targets]
      -> energy-guided masker: phoneme-level and word-level frame masks
      -> student: phoneme mask at the input of layer 1, word mask after layer N/2
      -> L = w_l L_l + w_h L_h + w_x L_x  (predictors P1, P2, P3)

The teacher's targets come either online (default) or from a cache on disk written once
(``precompute_teacher_targets: True``), through the same :class:`FeatureCache` that stores
upstream features: the teacher is wrapped as an upstream (:class:`TeacherTargets`) whose
two "layers" are the targets.

The learning rate follows :func:`warmup_cosine_lr` step by step. It is a function of the
position in training only, so a run resumed from an intra-epoch checkpoint continues on
the same curve; together with :class:`ser_modules.resume.RandomState` (masks, dropout)
and :func:`crop_seed` (random crops), a killed and resumed run ends with the same weights
as an uninterrupted one.
"""

import logging
import math
import os
import zlib

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from ser_modules.fingerprint import file_sha256
from ser_modules.resume import (
    loader_generator,
    register_completion_record,
    remove_incomplete_checkpoints,
)
from ser_modules.upstreams.base import Upstream, relative_to_absolute
from ser_modules.upstreams.huggingface import (
    WEIGHT_SUFFIXES,
    normalize_waveforms,
)

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss_low", "loss_high", "loss_cross")


def warmup_cosine_lr(
    progress_epochs, peak_lr, final_lr, warmup_epochs, total_epochs
):
    """Learning rate of Vesper pretraining at a (fractional) epoch position.

    Linear warm-up from 0 to ``peak_lr`` over ``warmup_epochs``, then cosine annealing to
    ``final_lr`` at ``total_epochs``. Stateless, so a resumed run continues exactly.

    Arguments
    ---------
    progress_epochs : float
        Epochs done so far, e.g. 3.25 = a quarter into the fourth epoch.
    peak_lr, final_lr : float
        5e-4 and 5e-6 in the paper.
    warmup_epochs, total_epochs : float
        5 and 100 in the paper.

    Returns
    -------
    float
    """
    if warmup_epochs > 0 and progress_epochs < warmup_epochs:
        return peak_lr * progress_epochs / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    fraction = min(max((progress_epochs - warmup_epochs) / span, 0.0), 1.0)
    return final_lr + 0.5 * (peak_lr - final_lr) * (
        1.0 + math.cos(math.pi * fraction)
    )


def crop_seed(seed, epoch, utterance_id):
    """Seed of the random training crop of one utterance in one epoch.

    The crop depends on nothing else (not on the data-loading process, the rank or the
    order of the batches), so a resumed run and a run with DataLoader workers draw the
    same crops as an uninterrupted single-process run.

    Arguments
    ---------
    seed : int
    epoch : int
    utterance_id : str

    Returns
    -------
    int
    """
    return zlib.crc32(f"{seed}:{epoch}:{utterance_id}".encode("utf-8"))


class StudentFromCNN(torch.nn.Module):
    """The student seen from its CNN features, so DistributedDataParallel wraps this call.

    Calling methods of a DDP-wrapped module directly would skip gradient synchronisation;
    going through ``forward`` keeps it.

    Arguments
    ---------
    encoder : ser_modules.vesper.encoder.VesperEncoder
        The student; its CNN is frozen here (paper III-A).
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        for parameter in encoder.feature_extractor.parameters():
            parameter.requires_grad_(False)

    def forward(self, cnn_feats, frame_mask, phoneme_mask=None, word_mask=None):
        """Raw outputs of layers N/2 and N: ``{N // 2: (B, T, D), N: (B, T, D)}``."""
        return self.encoder.forward_from_cnn(
            cnn_feats, frame_mask, phoneme_mask, word_mask
        )


class TeacherTargets(Upstream):
    """The frozen teacher as an upstream whose two representations are the targets.

    ``forward(wavs, wav_lens) -> (feats (B, 2, T, D), feat_lens)`` with the raw outputs of
    layers M/2 and M (no final LayerNorm), so that :class:`FeatureCache` can store
    precomputed targets exactly as it stores upstream features.

    Arguments
    ---------
    teacher : ser_modules.vesper.encoder.VesperEncoder
        The M-layer teacher (WavLM Large).
    source : str
        The folder it was loaded from; its files enter :meth:`identity` (the cache key).
    sample_rate : int
    """

    def __init__(self, teacher, source="", sample_rate=16000):
        super().__init__()
        self.teacher = teacher
        self.source = str(source)
        self.layers = (teacher.num_layers // 2, teacher.num_layers)
        self.num_layers = len(self.layers)
        self.output_dim = teacher.config.hidden_size
        self.hop_length = math.prod(teacher.config.conv_stride)
        self.sample_rate = sample_rate
        self.freeze()

    def identity(self):
        """Teacher files by sha256, target layers, normalisation (the cache key)."""
        files = {}
        if os.path.isdir(self.source):
            names = sorted(
                n
                for n in os.listdir(self.source)
                if n.endswith(WEIGHT_SUFFIXES) or n == "config.json"
            )
            files = {
                name: file_sha256(os.path.join(self.source, name))
                for name in names
            }
        if not files:
            # An in-memory teacher: fall back to a checksum of its weights.
            files = {
                "weights_sum": sum(
                    float(p.double().sum()) for p in self.teacher.parameters()
                )
            }
        return {
            "kind": "vesper_teacher_targets",
            "source": self.source,
            "files_sha256": files,
            "layers": list(self.layers),
            "normalize": bool(self.teacher.normalize_waveform),
            "sample_rate": self.sample_rate,
        }

    def targets_from_cnn(self, cnn_feats, frame_mask):
        """Targets from CNN features already computed for the student.

        Arguments
        ---------
        cnn_feats : torch.Tensor
            (B, T, C) output of the (shared, frozen) CNN.
        frame_mask : torch.Tensor
            (B, T) bool, True on real frames.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            Raw outputs of teacher layers M/2 and M, each (B, T, D), computed under
            ``torch.inference_mode`` (no autograd bookkeeping, no saved activations).
        """
        with torch.inference_mode():
            outputs = self.teacher.forward_from_cnn(
                cnn_feats, frame_mask, output_layers=self.layers
            )
        return outputs[self.layers[0]], outputs[self.layers[1]]

    def forward(self, wavs, wav_lens=None):
        """Targets of a waveform batch: ``(B, 2, T, D)`` and relative frame lengths ``(B,)``."""
        cnn_feats, frame_mask = self.teacher.extract_cnn_features(
            wavs, wav_lens
        )
        middle, last = self.targets_from_cnn(cnn_feats, frame_mask)
        feats = torch.stack([middle, last], dim=1)  # (B, 2, T, D)
        feat_lens = frame_mask.sum(dim=1).float() / frame_mask.shape[1]  # (B,)
        return feats, feat_lens


@register_checkpoint_hooks
class VesperPretrainBrain(sb.Brain):
    """Pretrains a Vesper student against a frozen WavLM teacher.

    ``modules``: ``student`` (:class:`StudentFromCNN`), ``loss``
    (:class:`ser_modules.vesper.losses.VesperPretrainingLoss`, holding the predictors)
    and, unless the targets come from a cache (``batch.targets``), ``teacher``
    (:class:`TeacherTargets`, which stays in eval mode when the Brain calls
    ``modules.train()``). Hparams read: ``objective`` (vesper | distill),
    ``epoch_counter``, ``seed``.

    Arguments
    ---------
    *args, **kwargs
        Those of ``sb.Brain``.
    masker : ser_modules.vesper.masking.EnergyGuidedMasker
        Draws the phoneme- and word-level masks of a batch.
    lr_schedule : callable
        ``progress_epochs -> learning rate`` (see :func:`warmup_cosine_lr`), set before
        every step.
    train_logger : speechbrain.utils.train_logger.TrainLogger
        Where the epochs' losses are logged.
    """

    def __init__(self, *args, masker, lr_schedule, train_logger, **kwargs):
        super().__init__(*args, **kwargs)
        self.masker = masker
        self.lr_schedule = lr_schedule
        self.train_logger = train_logger

    def on_fit_start(self):
        """Drop checkpoints a kill cut short, recover, register the completion record.

        As in :class:`ser_modules.training.EmotionBrain` (see :mod:`ser_modules.resume`):
        a run killed while writing a checkpoint resumes from the previous complete one.
        The distillation ablation never masks, so its mask embedding gets no gradient: it
        is frozen before DDP wraps the student, which rejects parameters that get no
        gradient (unless ``--find_unused_parameters``).
        """
        if self.hparams.objective == "distill":
            self.student_encoder().masked_spec_embed.requires_grad_(False)
        remove_incomplete_checkpoints(self.checkpointer)
        super().on_fit_start()
        register_completion_record(self.checkpointer)

    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """Record the number of training batches of this process (for the LR schedule).

        Each loader gets a private generator (:func:`ser_modules.resume.loader_generator`),
        so a run resumed mid-epoch draws the same masks and dropout as the uninterrupted run.
        """
        loader_kwargs.setdefault(
            "generator", loader_generator(self.hparams.seed, stage)
        )
        loader = super().make_dataloader(
            dataset, stage, ckpt_prefix=ckpt_prefix, **loader_kwargs
        )
        if stage == sb.Stage.TRAIN:
            self.steps_per_epoch = len(loader)
        return loader

    def student_encoder(self):
        """The student's VesperEncoder, inside a DDP wrapper or not."""
        student = self.modules.student
        return (
            student.module if hasattr(student, "module") else student
        ).encoder

    def compute_forward(self, batch, stage):
        """Student outputs, teacher targets and masks of one batch."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig  # (B, S)
        encoder = self.student_encoder()
        # The frozen CNN runs once: teacher and student share its output.
        cnn_feats, frame_mask = encoder.extract_cnn_features(
            wavs, wav_lens
        )  # (B, T, C), (B, T)
        num_frames = cnn_feats.shape[1]
        if hasattr(batch, "targets"):
            targets, _ = batch.targets  # (B, T_cache, 2, D), precomputed
            if targets.shape[1] != num_frames:
                raise RuntimeError(
                    f"Cached teacher targets have {targets.shape[1]} frames but the batch of {batch.id} "
                    f"has {num_frames}: delete the target cache (target_cache_folder) and run again."
                )
            teacher_mid, teacher_final = (
                targets[:, :, 0],
                targets[:, :, 1],
            )  # (B, T, D) each
        else:
            teacher_mid, teacher_final = self.modules.teacher.targets_from_cnn(
                cnn_feats, frame_mask
            )
        phoneme_mask = word_mask = None
        if self.hparams.objective != "distill":
            generator = None
            if stage != sb.Stage.TRAIN:
                # Validation draws the same masks every epoch, so its loss is comparable.
                generator = torch.Generator().manual_seed(
                    self.validation_seed(batch.id)
                )
            lengths = relative_to_absolute(wav_lens, wavs.shape[1])  # (B,)
            phoneme_mask, word_mask = self.masker(
                normalize_waveforms(wavs, lengths),
                wav_lens,
                num_frames,
                generator=generator,
            )  # (B, T) each
        student_outputs = self.modules.student(
            cnn_feats, frame_mask, phoneme_mask, word_mask
        )
        middle, last = encoder.num_layers // 2, encoder.num_layers
        return {
            "student_mid": student_outputs[middle],
            "student_final": student_outputs[last],
            "teacher_mid": teacher_mid,
            "teacher_final": teacher_final,
            "phoneme_mask": phoneme_mask,
            "word_mask": word_mask,
            "valid_mask": frame_mask,
        }

    @staticmethod
    def validation_seed(utterance_ids):
        """A seed that depends only on the utterances of the batch."""
        return zlib.crc32("\n".join(utterance_ids).encode("utf-8"))

    def compute_objectives(self, predictions, batch, stage):
        """``L = w_l L_l + w_h L_h + w_x L_x``; each term is also averaged for the log."""
        terms = self.modules.loss(**predictions)
        for name in LOSS_TERMS:
            self.term_sums[name] += float(terms[name].detach())
        self.term_count += 1
        return terms["loss"]

    def on_fit_batch_start(self, batch, should_step):
        """Set the warm-up + cosine learning rate of this step."""
        epoch = self.hparams.epoch_counter.current
        progress = (epoch - 1) + (self.step - 1) / max(1, self.steps_per_epoch)
        lr = self.lr_schedule(progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def init_optimizers(self):
        """AdamW on the trainable student and predictor parameters (teacher and CNN frozen)."""
        trainable = [
            p
            for name in ("student", "loss")
            for p in self.modules[name].parameters()
            if p.requires_grad
        ]
        self.optimizer = self.opt_class(trainable)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Reset the per-term loss sums (a resumed epoch gets them back from its checkpoint)."""
        if stage == sb.Stage.TRAIN and self.step > 0:
            return  # recovered mid-epoch: keep the sums of the batches already seen
        self.term_sums, self.term_count = dict.fromkeys(LOSS_TERMS, 0.0), 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the loss and its terms; checkpoint after validation."""
        stats = {"loss": stage_loss}
        stats.update(
            {
                name: value / max(1, self.term_count)
                for name, value in self.term_sums.items()
            }
        )
        stats = self.average_over_processes(stats)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            self.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                },
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            meta = {
                "loss": float(stage_loss),
                "train_loss": float(self.train_stats["loss"]),
                "epoch": float(epoch),
            }
            self.checkpointer.save_and_keep_only(
                meta=meta, min_keys=["loss"], num_to_keep=1
            )

    def average_over_processes(self, stats):
        """Average per-process statistics over the DDP processes (each saw its own share)."""
        if not (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            return stats
        names = sorted(stats)
        values = torch.tensor(
            [float(stats[name]) for name in names],
            dtype=torch.float64,
            device=self.device,
        )
        torch.distributed.all_reduce(values)
        values /= torch.distributed.get_world_size()
        return dict(zip(names, values.tolist()))

    @mark_as_saver
    def _save(self, path):
        """Brain state (step, running loss) plus the running sums of the loss terms."""
        state = {
            "step": self.step,
            "avg_train_loss": float(self.avg_train_loss),
            "optimizer_step": self.optimizer_step,
            "term_sums": {
                name: float(value) for name, value in self.term_sums.items()
            },
            "term_count": self.term_count,
        }
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(yaml.dump(state))

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        del end_of_epoch
        with open(path, encoding="utf-8") as handle:
            state = yaml.safe_load(handle)
        self.step = state["step"]
        self.avg_train_loss = state["avg_train_loss"]
        self.optimizer_step = state["optimizer_step"]
        self.term_sums = dict(state["term_sums"])
        self.term_count = state["term_count"]
