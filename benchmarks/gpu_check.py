"""The prepared GPU check: the figures a GPU user needs, as one Markdown table (< 8 min).

Measured on one device (``--device``, default ``cuda``), each after an untimed warm-up:

1. **Vesper-12 pretraining** steps per second at batch 32 x 5 s, bf16 autocast and fp32:
   a full :meth:`VesperPretrainBrain.fit_batch` (forward, backward, AdamW, clipping) with the
   online teacher (a WavLM-Large-shaped 24-layer model run under ``inference_mode`` on the
   shared CNN output, as ``recipes/LSSED/pretrain.py`` does), through the same Brain set-up
   as ``benchmarks/bench_vesper_pretrain_step.py``;
2. **WavLM-Large extraction**: seconds of audio per second through
   :class:`~ser_modules.upstreams.HuggingFaceUpstream` (all 25 hidden states, the feature
   cache's call), batch 32 x 5 s, fp32 and bf16, with the fast path and, for reference,
   the Hugging Face forward (``fast_path=False``);
3. **BAS super-net search step** on cached WavLM-Large-sized features (batch 32 x 325
   frames x 1024, 4 searchable layers, as ``benchmarks/bench_bas_search.py`` part b),
   milliseconds per step, fp32 and bf16;
4. the **projected hours for 100 epochs of LSSED** pretraining (147,025 utterances x 5 s):
   ``100 * ceil(147025 / batch) / steps_per_second / 3600`` for each precision.

Weights are random (same architectures, same cost). A measurement that fails is reported in
the table (``failed: Error``) and the others still run; the exit status is then 1.
``--tiny`` swaps in small models and batches so that a CPU test runs the whole script in
seconds (``tests/test_gpu_check.py``): the code path is the real one, only the sizes change.

Run (or ``bash benchmarks/gpu_check.sh``)::

    PYTHONPATH=. python benchmarks/gpu_check.py --device cuda --output gpu_check.md
"""

import argparse
import contextlib
import importlib.util
import logging
import math
import os
import statistics
import tempfile
import time

import torch
from speechbrain.utils.epoch_loop import EpochCounter
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from ser_modules.downstream.supernet import BASSuperNet
from ser_modules.upstreams import HuggingFaceUpstream
from ser_modules.vesper.compression import build_student_from_teacher
from ser_modules.vesper.encoder import VesperEncoder, wavlm_large_config
from ser_modules.vesper.losses import VesperPretrainingLoss
from ser_modules.vesper.masking import EnergyGuidedMasker
from ser_modules.vesper.pretraining import StudentFromCNN

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_RATE = 16000
LSSED_UTTERANCES = 147025
LSSED_SECONDS = 5.0
EPOCHS = 100
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_pretrain_bench():
    """``benchmarks/bench_vesper_pretrain_step.py`` as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_vesper_pretrain_step",
        os.path.join(HERE, "bench_vesper_pretrain_step.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_teacher_config():
    """A small WavLM (64 dims, 4 layers, hop 10 samples) standing in for WavLM Large."""
    return WavLMConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32, 32),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        conv_bias=False,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=64,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        mask_time_prob=0.075,
    )


def settings(args):
    """Sizes of every measurement: the real ones, or tiny ones for the CPU test."""
    if args.tiny:
        return {
            "teacher_config": tiny_teacher_config(),
            "student_layers": 2,
            "batch": 2,
            "seconds": 0.5,
            "extract_batch": 2,
            "bas_batch": 2,
            "bas_frames": 20,
            "bas_dim": 64,
            "bas_ffn": 128,
            "bas_heads": 4,
            "steps": 1,
        }
    return {
        "teacher_config": wavlm_large_config(24),
        "student_layers": 12,
        "batch": args.batch_size,
        "seconds": args.seconds,
        "extract_batch": args.batch_size,
        "bas_batch": 32,
        "bas_frames": 325,
        "bas_dim": 1024,
        "bas_ffn": 2048,
        "bas_heads": 8,
        "steps": args.steps,
    }


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def timed(call, device, steps):
    """Median seconds of ``steps`` calls after one untimed warm-up call."""
    call()
    durations = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def pretraining_steps_per_second(size, device, precisions):
    """Vesper pretraining steps per second with the online teacher, per precision."""
    bench = load_pretrain_bench()
    torch.manual_seed(0)
    teacher = VesperEncoder(size["teacher_config"]).eval().to(device)
    student = StudentFromCNN(
        build_student_from_teacher(teacher, size["student_layers"])
    )
    loss = VesperPretrainingLoss(
        dim=size["teacher_config"].hidden_size, predictor_hidden=512
    )
    hparams = {
        "masker": EnergyGuidedMasker(),
        "objective": "vesper",
        "peak_lr": 5e-4,
        "final_lr": 5e-6,
        "warmup_epochs": 5,
        "number_of_epochs": EPOCHS,
        "epoch_counter": EpochCounter(EPOCHS),
        "seed": 0,
    }
    hparams["epoch_counter"].current = 1
    batch = bench.random_batch(size["batch"], size["seconds"])
    rates = {}
    for precision in precisions:
        brain = bench.make_brain(
            "ours", student, teacher, loss, hparams, device, precision
        )

        def step(brain=brain):
            brain.step += 1
            brain.fit_batch(batch)

        rates[precision] = 1.0 / timed(step, device, size["steps"])
        del brain
    return rates


def extraction_speed(size, device, precisions, fast_path):
    """Seconds of audio per second through HuggingFaceUpstream (all hidden states)."""
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        WavLMModel(size["teacher_config"]).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(
            do_normalize=True, return_attention_mask=True
        ).save_pretrained(folder)
        upstream = HuggingFaceUpstream(
            folder, layers="all", fast_path=fast_path
        ).to(device)
    if fast_path and upstream.fast is None:
        raise RuntimeError("the fast path was not enabled for this model")
    samples = int(size["seconds"] * SAMPLE_RATE)
    wavs = 0.1 * torch.randn(size["extract_batch"], samples, device=device)
    speeds = {}
    for precision in precisions:

        def extract(precision=precision):
            with autocast(device, precision):
                upstream(wavs)

        speeds[precision] = (
            size["extract_batch"]
            * size["seconds"]
            / timed(extract, device, size["steps"])
        )
    return speeds


def bas_step_ms(size, device, precisions, layers=4, classes=4):
    """Milliseconds per BAS super-net search step (forward, loss, backward, SGD) on features."""
    torch.manual_seed(0)
    supernet = (
        BASSuperNet(
            size["bas_dim"],
            classes,
            layers,
            num_heads=size["bas_heads"],
            ffn_dim=size["bas_ffn"],
            dropout=0.1,
        )
        .to(device)
        .train()
    )
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.005)
    feats = torch.randn(
        size["bas_batch"], size["bas_frames"], size["bas_dim"], device=device
    )
    lens = torch.linspace(0.5, 1.0, size["bas_batch"], device=device)
    labels = torch.arange(size["bas_batch"], device=device) % classes
    times = {}
    for precision in precisions:

        def step(precision=precision):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(
                    supernet(feats, lens), labels
                )
            loss.backward()
            optimizer.step()

        times[precision] = 1000 * timed(step, device, size["steps"])
    return times


def projected_hours(
    steps_per_second, batch_size, utterances=LSSED_UTTERANCES, epochs=EPOCHS
):
    """Hours for ``epochs`` epochs of ``utterances`` at ``batch_size`` and the measured rate."""
    return epochs * math.ceil(utterances / batch_size) / steps_per_second / 3600


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def cells(values, precisions, digits):
    """Table cells of one measurement: numbers, or the error that stopped it."""
    if isinstance(values, Exception):
        return " | ".join(
            f"failed: {type(values).__name__}" for _ in precisions
        )
    return " | ".join(f"{values[p]:.{digits}f}" for p in precisions)


def markdown_table(device, size, results, precisions, elapsed, tiny):
    """The check's Markdown report (a measurement that raised shows ``failed: Error``)."""
    batch, seconds = size["batch"], size["seconds"]
    teacher_layers = size["teacher_config"].num_hidden_layers
    pretrain = results["pretrain"]
    hours = (
        pretrain
        if isinstance(pretrain, Exception)
        else {p: projected_hours(pretrain[p], batch) for p in precisions}
    )
    lines = [
        f"GPU check on {device_name(device)}; torch {torch.__version__}; random weights; "
        f"{'TINY sizes (CPU test of the script, not a measurement)' if tiny else 'full sizes'}; "
        f"{elapsed:.0f} s in all.",
        "",
        "| measurement | setting | " + " | ".join(precisions) + " |",
        "|---|---|" + "---|" * len(precisions),
        f"| Vesper-{size['student_layers']} pretraining, steps/s | batch {batch} x {seconds:g} s, online "
        f"{teacher_layers}-layer teacher | {cells(pretrain, precisions, 3)} |",
        f"| projected hours, {EPOCHS} epochs of LSSED | {LSSED_UTTERANCES:,} x {LSSED_SECONDS:g} s, "
        f"{math.ceil(LSSED_UTTERANCES / batch)} steps/epoch at batch {batch} | {cells(hours, precisions, 1)} |",
        f"| WavLM-Large extraction (fast path), audio s / s | batch {size['extract_batch']} x {seconds:g} s, all "
        f"{teacher_layers + 1} hidden states | {cells(results['extract_fast'], precisions, 1)} |",
        f"| WavLM-Large extraction (HF forward), audio s / s | the same, Hugging Face forward "
        f"(fast_path=False) | {cells(results['extract_hf'], precisions, 1)} |",
        f"| BAS super-net search step, ms | 4 layers, cached features {size['bas_batch']} x "
        f"{size['bas_frames']} x {size['bas_dim']} | {cells(results['bas'], precisions, 1)} |",
    ]
    failures = [
        f"- {name}: {type(error).__name__}: {error}"
        for name, error in results.items()
        if isinstance(error, Exception)
    ]
    if failures:
        lines += ["", "Failed measurements:", *failures]
    return "\n".join(lines) + "\n"


def measure(name, call, results):
    """Run one measurement; keep its error instead of losing the rest of the check."""
    try:
        results[name] = call()
    except Exception as error:  # noqa: BLE001 - reported in the table, exit status 1
        logging.exception("%s failed", name)
        results[name] = error
    print(f"{name}: {results[name]}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=LSSED_SECONDS)
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps per measurement (median)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["bf16", "fp32"],
        choices=list(PRECISIONS),
    )
    parser.add_argument(
        "--output", default="gpu_check.md", help="Markdown file written"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="small models and batches (CPU test)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "No CUDA device is visible: run on a GPU machine, or pass --device cpu --tiny to test."
        )
    size = settings(args)
    started = time.perf_counter()
    results = {}
    measure(
        "pretrain",
        lambda: pretraining_steps_per_second(size, device, args.precisions),
        results,
    )
    measure(
        "extract_fast",
        lambda: extraction_speed(size, device, args.precisions, True),
        results,
    )
    measure(
        "extract_hf",
        lambda: extraction_speed(size, device, args.precisions, False),
        results,
    )
    measure("bas", lambda: bas_step_ms(size, device, args.precisions), results)
    table = markdown_table(
        device,
        size,
        results,
        args.precisions,
        time.perf_counter() - started,
        args.tiny,
    )
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    if any(isinstance(value, Exception) for value in results.values()):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
