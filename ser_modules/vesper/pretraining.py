"""Vesper pretraining: a SpeechBrain Brain that distils WavLM Large into Vesper-N.

One step (paper III-B, ``vesper_spec.md``)::

    waveform -> frozen CNN (once, shared by teacher and student)
      -> teacher (inference mode): raw outputs of layers M/2 and M        [targets]
      -> energy-guided masker: phoneme-level and word-level frame masks
      -> student: phoneme mask at the input of layer 1, word mask after layer N/2
      -> L = w_l L_l + w_h L_h + w_x L_x  (predictors P1, P2, P3)

The teacher's targets come either online (default) or from a cache on disk written once
(``precompute_teacher_targets: True``), through the same :class:`FeatureCache` that stores
upstream features: the teacher is wrapped as an "upstream" whose two layers are the targets.
"""

import logging
import math

import speechbrain as sb
import torch

from ser_modules.upstreams.base import relative_to_absolute
from ser_modules.upstreams.huggingface import normalize_waveforms

logger = logging.getLogger(__name__)


def warmup_cosine_lr(progress_epochs, peak_lr, final_lr, warmup_epochs, total_epochs):
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
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * fraction))


class StudentFromCNN(torch.nn.Module):
    """The student seen from its CNN features, so DistributedDataParallel wraps this call.

    Calling methods of a DDP-wrapped module directly would skip gradient synchronisation;
    going through ``forward`` keeps it.
    """

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        for parameter in encoder.feature_extractor.parameters():
            parameter.requires_grad_(False)  # the CNN is frozen (paper III-A)

    def forward(self, cnn_feats, frame_mask, phoneme_mask=None, word_mask=None):
        """Raw outputs of layers N/2 and N: ``{N // 2: (B, T, D), N: (B, T, D)}``."""
        return self.encoder.forward_from_cnn(cnn_feats, frame_mask, phoneme_mask, word_mask)


class TeacherTargets(torch.nn.Module):
    """The frozen teacher as an upstream whose representations are the two targets.

    ``forward(wavs, wav_lens) -> (feats (B, 2, T, D), feat_lens)`` with layers M/2 and M
    (raw, no final LayerNorm), so the feature cache can store precomputed targets.
    """

    def __init__(self, teacher, source=""):
        super().__init__()
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.source = str(source)
        self.layers = (teacher.num_layers // 2, teacher.num_layers)
        self.num_layers = 2
        self.output_dim = teacher.config.hidden_size

    def train(self, mode=True):
        """Always in eval mode: the teacher is frozen."""
        return super().train(False)

    def identity(self):
        """What changes the targets (for the cache key)."""
        digest = sum(float(p.double().sum()) for p in self.teacher.parameters())
        return {"kind": "vesper_teacher_targets", "source": self.source, "layers": list(self.layers),
                "weights_checksum": digest, "normalize": bool(self.teacher.normalize_waveform)}

    @torch.no_grad()
    def forward(self, wavs, wav_lens):
        cnn_feats, frame_mask = self.teacher.extract_cnn_features(wavs, wav_lens)
        outputs = self.teacher.forward_from_cnn(cnn_feats, frame_mask, output_layers=self.layers)
        feats = torch.stack([outputs[layer] for layer in self.layers], dim=1)  # (B, 2, T, D)
        feat_lens = frame_mask.sum(dim=1).float() / frame_mask.shape[1]
        return feats, feat_lens


class VesperPretrainBrain(sb.Brain):
    """Pretrains a Vesper student against a frozen WavLM teacher.

    ``modules``: ``student`` (:class:`StudentFromCNN`), ``loss`` (``VesperPretrainingLoss``
    holding the predictors) and ``teacher`` (:class:`TeacherTargets`, which stays in eval
    mode even when the Brain calls ``modules.train()``). Hparams:
    ``masker``, ``objective`` (vesper | distill), ``peak_lr``, ``final_lr``,
    ``warmup_epochs``, ``number_of_epochs``, ``steps_per_epoch``, ``epoch_counter``,
    ``train_logger``.
    """

    def compute_forward(self, batch, stage):
        """Student outputs, teacher targets and masks of one batch."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig  # (B, S)
        student = self.modules.student.module if hasattr(self.modules.student, "module") else self.modules.student
        # The frozen CNN runs once: teacher and student share its output.
        cnn_feats, frame_mask = student.encoder.extract_cnn_features(wavs, wav_lens)  # (B, T, 512), (B, T)
        num_frames = cnn_feats.shape[1]
        if hasattr(batch, "targets"):
            targets, _ = batch.targets  # (B, T_cache, 2, D) precomputed
            targets = targets[:, :num_frames].float()
            teacher_mid, teacher_final = targets[:, :, 0], targets[:, :, 1]
        else:
            teacher = self.modules.teacher.teacher
            with torch.inference_mode():
                layers = (teacher.num_layers // 2, teacher.num_layers)
                outputs = teacher.forward_from_cnn(cnn_feats, frame_mask, output_layers=layers)
            teacher_mid, teacher_final = outputs[layers[0]], outputs[layers[1]]
        if self.hparams.objective == "distill":
            phoneme_mask = word_mask = None
        else:
            generator = None
            if stage != sb.Stage.TRAIN:
                # Validation draws the same masks every epoch, so its loss is comparable.
                generator = torch.Generator().manual_seed(self.validation_seed(batch))
            phoneme_mask, word_mask = self.hparams.masker(
                normalize_waveforms(wavs, relative_to_absolute(wav_lens, wavs.shape[1])), wav_lens, num_frames,
                generator=generator,
            )
            phoneme_mask, word_mask = phoneme_mask.to(self.device), word_mask.to(self.device)
        student_outputs = self.modules.student(cnn_feats, frame_mask, phoneme_mask, word_mask)
        middle, last = student.encoder.num_layers // 2, student.encoder.num_layers
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
    def validation_seed(batch):
        """A seed that depends only on the utterances of the batch."""
        return sum(sum(map(ord, utterance)) * (i + 1) for i, utterance in enumerate(batch.id)) % (2**31)

    def compute_objectives(self, predictions, batch, stage):
        """``L = w_l L_l + w_h L_h + w_x L_x`` (terms logged separately)."""
        terms = self.modules.loss(**{key: predictions[key] for key in (
            "student_mid", "student_final", "teacher_mid", "teacher_final",
            "phoneme_mask", "word_mask", "valid_mask")})
        for name in ("loss_low", "loss_high", "loss_cross"):
            self.term_sums[name] = self.term_sums.get(name, 0.0) + float(terms[name].detach())
        self.term_count += 1
        return terms["loss"]

    def on_fit_batch_start(self, batch, should_step):
        """Set the warm-up + cosine learning rate for this step (stateless schedule)."""
        epoch = self.hparams.epoch_counter.current
        progress = (epoch - 1) + (self.step - 1) / max(1, self.hparams.steps_per_epoch)
        lr = warmup_cosine_lr(progress, self.hparams.peak_lr, self.hparams.final_lr,
                              self.hparams.warmup_epochs, self.hparams.number_of_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def init_optimizers(self):
        """AdamW on the trainable student and predictor parameters (teacher and CNN frozen)."""
        trainable = [p for name in ("student", "loss") for p in self.modules[name].parameters() if p.requires_grad]
        self.optimizer = self.opt_class(trainable)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Reset the per-term loss sums."""
        self.term_sums, self.term_count = {}, 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log the loss and its terms; checkpoint on the validation loss."""
        stats = {"loss": stage_loss}
        stats.update({name: value / max(1, self.term_count) for name, value in self.term_sums.items()})
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"loss": float(stage_loss), "epoch": float(epoch)}, min_keys=["loss"], num_to_keep=1
            )
