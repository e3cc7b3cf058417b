"""One Vesper pretraining step: this project's step against a naive one, fp32 and bf16 autocast.

Builds a randomly initialised WavLM-Large-shaped teacher (24 layers, 1024 dims, 316 M
parameters, about 1.3 GB in fp32) and a Vesper-4 student compressed from it
(``extract``), then times full training steps (forward, backward, AdamW, gradient
clipping) on a batch of ``--batch_size`` x ``--seconds`` s of random audio, through
:class:`VesperPretrainBrain.fit_batch`, the call the recipe makes:

* **ours**: the frozen CNN runs once and its output feeds both models; the teacher runs
  under ``torch.inference_mode`` (what ``recipes/LSSED/pretrain.py`` does);
* **naive**: teacher and student each run their own CNN, and the teacher keeps autograd
  on: its parameters require gradients (a model loaded and not frozen) and the loss uses
  its outputs as they come, so the backward pass also runs through all 24 teacher
  layers and computes teacher gradients that nothing uses;
* **naive_detached**: the same, but the targets are detached (as
  ``VesperPretrainingLoss`` does): no backward through the teacher, yet its activations
  are still kept alive until the end of the step.

For each it reports the median time of ``--steps`` step(s) after one short warm-up step
(that also creates the AdamW state), and the peak resident memory of those steps above
the memory held before them (weights, optimizer state), read from ``VmHWM`` after
resetting it through ``/proc/self/clear_refs`` (Linux). Ratios are naive / ours.

Run::

    PYTHONPATH=. python benchmarks/bench_vesper_pretrain_step.py [--device cpu] [--steps 1] [--student_layers 4]

On a GPU (``--device cuda``) peak memory is ``torch.cuda.max_memory_allocated``.
"""

import argparse
import ctypes
import functools
import gc
import re
import statistics
import time

import torch
from speechbrain.core import Stage
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.epoch_loop import EpochCounter

from ser_modules.upstreams.base import padding_mask, relative_to_absolute
from ser_modules.upstreams.huggingface import normalize_waveforms
from ser_modules.vesper.compression import build_student_from_teacher
from ser_modules.vesper.encoder import VesperEncoder, wavlm_large_config
from ser_modules.vesper.losses import VesperPretrainingLoss
from ser_modules.vesper.masking import EnergyGuidedMasker
from ser_modules.vesper.pretraining import (
    StudentFromCNN,
    TeacherTargets,
    VesperPretrainBrain,
    warmup_cosine_lr,
)

SAMPLE_RATE = 16000


class NaiveVesperPretrainBrain(VesperPretrainBrain):
    """The same step, written without sharing the CNN and with autograd on the teacher.

    ``hparams.detach_targets`` False: the targets are used as they come (the loss
    reaches the teacher, and the backward pass computes teacher gradients that nothing
    uses); True: they are detached (the teacher's activations are still kept until the
    end of the step).
    """

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig  # (B, S)
        teacher = self.hparams.naive_teacher
        lengths = relative_to_absolute(wav_lens, wavs.shape[1])  # (B,)
        # Teacher: its own CNN pass, with autograd (activations kept for a backward that never comes).
        teacher_cnn = teacher.feature_extractor(
            normalize_waveforms(wavs, lengths)
        ).transpose(1, 2)  # (B, T, 512)
        teacher_mask = padding_mask(
            teacher.frame_lengths(lengths), teacher_cnn.shape[1]
        )  # (B, T)
        layers = (teacher.num_layers // 2, teacher.num_layers)
        targets = teacher.forward_from_cnn(
            teacher_cnn, teacher_mask, output_layers=layers
        )
        # Student: a second pass of the same frozen CNN.
        encoder = self.student_encoder()
        cnn_feats, frame_mask = encoder.extract_cnn_features(
            wavs, wav_lens
        )  # (B, T, 512)
        phoneme_mask, word_mask = self.masker(
            normalize_waveforms(wavs, lengths), wav_lens, cnn_feats.shape[1]
        )
        outputs = self.modules.student(
            cnn_feats, frame_mask, phoneme_mask, word_mask
        )
        middle, last = encoder.num_layers // 2, encoder.num_layers
        return {
            "student_mid": outputs[middle],
            "student_final": outputs[last],
            "teacher_mid": targets[layers[0]],
            "teacher_final": targets[layers[1]],
            "phoneme_mask": phoneme_mask,
            "word_mask": word_mask,
            "valid_mask": frame_mask,
        }

    def compute_objectives(self, predictions, batch, stage):
        if self.hparams.detach_targets:
            return super().compute_objectives(predictions, batch, stage)
        # VesperPretrainingLoss detaches the targets; this is its sum without that.
        valid = predictions["valid_mask"]
        terms = {
            "low": (
                "student_mid",
                "teacher_mid",
                predictions["phoneme_mask"] & valid,
            ),
            "high": (
                "student_final",
                "teacher_final",
                predictions["word_mask"] & valid,
            ),
            "cross": ("student_final", "teacher_mid", valid),
        }
        loss_module = self.modules.loss
        total = 0.0
        for term, (inputs, targets, frames) in terms.items():
            predicted = loss_module.predictors[term](
                predictions[inputs][frames]
            )  # (K, D)
            selected = predictions[targets][frames]  # (K, D), not detached
            squared_error = torch.nn.functional.mse_loss(
                predicted.float(), selected.float(), reduction="sum"
            )
            total = total + loss_module.weights[term] * squared_error / max(
                selected.numel(), 1
            )
        return total


def memory_mb(field):
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process in MiB."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        return int(re.search(rf"{field}:\s+(\d+) kB", handle.read())[1]) / 1024


def reset_peak_memory(device):
    """Release freed memory to the OS and restart peak tracking; returns the baseline (MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")  # VmHWM := VmRSS
    return memory_mb("VmRSS")


def peak_memory(device):
    """Peak since :func:`reset_peak_memory` (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return memory_mb("VmHWM")


VARIANTS = {
    # name: (Brain class, teacher module in modules, detach_targets)
    "ours": (VesperPretrainBrain, True, True),
    "naive": (NaiveVesperPretrainBrain, False, False),
    "naive_detached": (NaiveVesperPretrainBrain, False, True),
}


def make_brain(variant, student, teacher, loss, hparams, device, precision):
    """A Brain of ``variant`` ready for ``fit_batch`` (optimizer created, train mode, epoch 1)."""
    brain_class, shares_cnn, detach_targets = VARIANTS[variant]
    modules = {"student": student, "loss": loss}
    if shares_cnn:
        modules["teacher"] = TeacherTargets(
            teacher
        )  # frozen: no gradients, eval mode
    else:
        # A teacher loaded and not frozen (all its parameters require gradients).
        for parameter in teacher.parameters():
            parameter.requires_grad_(True)
    brain = brain_class(
        modules=modules,
        opt_class=functools.partial(
            torch.optim.AdamW, lr=5e-4, betas=(0.9, 0.999), weight_decay=0.01
        ),
        masker=hparams["masker"],
        lr_schedule=functools.partial(
            warmup_cosine_lr,
            peak_lr=hparams["peak_lr"],
            final_lr=hparams["final_lr"],
            warmup_epochs=hparams["warmup_epochs"],
            total_epochs=hparams["number_of_epochs"],
        ),
        train_logger=None,
        hparams={
            **hparams,
            "naive_teacher": teacher,
            "detach_targets": detach_targets,
        },
        run_opts={
            "device": str(device),
            "precision": precision,
            "noprogressbar": True,
        },
    )
    brain.steps_per_epoch = 100
    brain.on_fit_start()  # creates the optimizer
    brain.on_stage_start(Stage.TRAIN)
    brain.modules.train()
    brain.step, brain.nonfinite_count = (
        0,
        0,
    )  # what Brain.fit sets before the first batch
    return brain


def random_batch(batch_size, seconds):
    """``batch_size`` utterances of ``seconds`` s of noise, as the recipe's PaddedBatch."""
    num_samples = int(seconds * SAMPLE_RATE)
    return PaddedBatch(
        [
            {"id": f"utt{i}", "sig": 0.1 * torch.randn(num_samples)}
            for i in range(batch_size)
        ]
    )


def time_steps(brain, warmup_batch, batch, steps, device):
    """One short warm-up step (it also creates the AdamW state), then ``steps`` timed steps.

    Returns
    -------
    (float, float)
        Median milliseconds per step and peak MiB above the memory held before the timed steps.
    """
    brain.step += 1
    brain.fit_batch(warmup_batch)
    baseline = reset_peak_memory(device)
    times = []
    for _ in range(steps):
        brain.step += 1
        start = time.perf_counter()
        brain.fit_batch(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), peak_memory(device) - baseline


def main(argv=None):
    """Run the benchmark (see the module docstring) and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="timed steps per variant (after a short warm-up step)",
    )
    parser.add_argument("--student_layers", type=int, default=4)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions, variants = args.precisions.split(","), args.variants.split(",")
    torch.manual_seed(0)

    started = time.perf_counter()
    teacher = (
        VesperEncoder(wavlm_large_config(24)).eval().to(device)
    )  # random init, WavLM Large shape
    student = StudentFromCNN(
        build_student_from_teacher(teacher, args.student_layers)
    )
    loss = VesperPretrainingLoss(dim=1024, predictor_hidden=512)
    hparams = {
        "masker": EnergyGuidedMasker(),
        "objective": "vesper",
        "peak_lr": 5e-4,
        "final_lr": 5e-6,
        "warmup_epochs": 5,
        "number_of_epochs": 100,
        "epoch_counter": EpochCounter(100),
        "seed": 0,
    }
    hparams["epoch_counter"].current = 1
    batch, warmup_batch = (
        random_batch(args.batch_size, args.seconds),
        random_batch(args.batch_size, 0.5),
    )
    print(
        f"Teacher: WavLM Large shape, {teacher.num_layers} layers, "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M parameters; student: Vesper-"
        f"{args.student_layers}, {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M; "
        f"built in {time.perf_counter() - started:.0f} s"
    )
    print(
        f"Batch {args.batch_size} x {args.seconds:g} s on {device} ({torch.get_num_threads()} threads); "
        f"median of {args.steps} step(s) after a 0.5 s warm-up step\n"
    )

    results = {}
    for precision in precisions:
        for variant in variants:
            brain = make_brain(
                variant, student, teacher, loss, hparams, device, precision
            )
            results[(variant, precision)] = time_steps(
                brain, warmup_batch, batch, args.steps, device
            )
            del brain
            print(
                f"  {variant} {precision}: {results[(variant, precision)][0]:.0f} ms",
                flush=True,
            )

    print(
        "\n| step | precision | ms / step | peak memory above weights and optimizer state (MiB) |"
    )
    print("|---|---|---|---|")
    for (variant, precision), (milliseconds, memory) in results.items():
        print(
            f"| {variant} | {precision} | {milliseconds:.0f} | {memory:.0f} |"
        )
    print()
    for precision in precisions:
        ours_ms, ours_mb = results[("ours", precision)]
        for variant in variants[1:]:
            ms, mb = results[(variant, precision)]
            print(
                f"{precision}: {variant} / ours: time {ms / ours_ms:.2f}x, peak memory {mb / ours_mb:.2f}x"
            )
    if {"fp32", "bf16"} <= set(precisions):
        print(
            f"ours: fp32 / bf16 time {results[('ours', 'fp32')][0] / results[('ours', 'bf16')][0]:.2f}x"
        )
    print(f"\nTotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
