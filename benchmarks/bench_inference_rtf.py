"""Inference speed of exported model folders vs the bare Hugging Face forward, in one run.

For up to three upstreams, each with the SUPERB classifier (``hparams/superb_*.yaml``):

* Fbank (80 log-Mel bands, the CPU baseline),
* a Vesper-4-sized random WavLM (WavLM Large's CNN and width: 1024 dims, 4 layers, 16 heads,
  FFN 4096; ``ser_modules.vesper.encoder.wavlm_large_config(4)``),
* a WavLM-Large-sized random WavLM (the same with 24 layers),

it checkpoints the untrained split, exports it with
:func:`ser_modules.model_export.export_model_folder` (the folder a recipe writes), loads it with
``EmotionClassifier.from_hparams`` and times ``classify_file`` (read + resample + windows +
upstream + classifier: what ``python -m ser_modules.infer`` does), in fp32 and under bf16
autocast (SpeechBrain's ``precision`` run option), on

* single files (``--seconds`` long, one window each; median over ``--files`` files), and
* one long file (``--long_minutes``, default 10; cut into the training crop's windows,
  classified in batches of 8 windows).

Next to each, interleaved in the same loop so that load from other jobs hits both alike:

* the bare Hugging Face eager forward (``WavLMModel(..., output_hidden_states=True)``, under
  the same autocast) on the same audio (the long file as the same batches of windows): the
  reference the fast path (``ser_modules.upstreams.fast_wavlm``) is compared with;
* the machine's matmul throughput (1024 x 1024 ``a @ b.T``, fp32 or bf16), measured for
  0.5 s right after every timing; the best of all these measurements in the run is the
  machine's throughput, and the fraction of it a model reaches is its upstream FLOPs
  (counted with ``torch.utils.flop_counter.FlopCounterMode`` on the 6.5 s window; 2 FLOPs
  per multiply-add) times its best speed, divided by that best matmul throughput (best
  against best: under load from other jobs a single short matmul sample is too noisy).

"x real time" is seconds of audio per second of compute (10x: a minute in 6 s). Each figure
is the best of ``--repeats`` interleaved rounds (the least disturbed by other jobs;
``--long_repeats`` for the long file).
``--profile`` also prints ``torch.profiler`` tables of the Vesper-4-sized single-file call,
Hugging Face vs fast path.

Run::

    PYTHONPATH=. python benchmarks/bench_inference_rtf.py [--models fbank vesper4 large]
        [--files 3] [--long_minutes 10] [--repeats 2] [--long_repeats 1] [--threads 2] [--profile]
"""

import argparse
import contextlib
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2FeatureExtractor, WavLMModel

from ser_modules.inference import EmotionClassifier, window_bounds
from ser_modules.model_export import export_model_folder
from ser_modules.vesper.encoder import wavlm_large_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 16000
LABELS = ["angry", "happy", "neutral", "sad"]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
WINDOW_SECONDS = 6.5  # crop_seconds of the SUPERB recipes: the inference window
BATCH_WINDOWS = 8  # EmotionClassifier.classify_file's default batch of windows
MODELS = {
    "fbank": ("Fbank (80 log-Mel)", None),
    "vesper4": ("Vesper-4-sized WavLM (1024 d, 4 layers)", 4),
    "large": ("WavLM-Large-sized (1024 d, 24 layers)", 24),
}


def save_wavlm_large_sized(folder, num_layers):
    """A random WavLM with WavLM Large's architecture and ``num_layers`` layers, as a folder."""
    torch.manual_seed(0)
    WavLMModel(
        wavlm_large_config(num_hidden_layers=num_layers)
    ).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder


def export_untrained_split(
    hparams_file, overrides, work_folder, label_encoder_path
):
    """Checkpoint the untrained modules of a recipe's YAML and export a model folder."""
    with open(
        os.path.join(REPO_ROOT, "hparams", hparams_file), encoding="utf-8"
    ) as handle:
        hparams = load_hyperpyyaml(
            handle,
            {
                "data_folder": work_folder,
                "output_folder": os.path.join(work_folder, "run"),
                "num_classes": len(LABELS),
                **overrides,
            },
        )
    if "input_norm" in hparams.get("modules", {}):
        # Give the global normalisation statistics (one update, as in the first epoch).
        hparams["input_norm"].train()
        hparams["input_norm"](
            torch.randn(2, 50, hparams["input_dim"]), torch.ones(2), epoch=1
        )
    checkpoint = hparams["checkpointer"].save_checkpoint()
    return export_model_folder(
        hparams,
        checkpoint,
        label_encoder_path,
        os.path.join(work_folder, "model"),
    )


def write_audio(path, seconds, seed):
    """A noise-like 16 kHz wav file of ``seconds``; returns the samples too."""
    samples = 0.1 * np.random.default_rng(seed).standard_normal(
        int(round(seconds * SAMPLE_RATE))
    )
    soundfile.write(path, samples, SAMPLE_RATE)
    return path


def autocast(precision):
    if PRECISIONS[precision] == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=PRECISIONS[precision])


def matmul_gflops(dtype, seconds=0.5, size=1024):
    """Measured GFLOP/s of ``a @ b.T`` (the ``nn.Linear`` layout), ``2 size^3`` FLOPs each."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b.T
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b.T
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def count_flops_per_second(folder, seconds=WINDOW_SECONDS):
    """Forward FLOPs of the bare model per second of audio (on one ``seconds`` window)."""
    model = WavLMModel.from_pretrained(folder).eval()
    for module in model.modules():  # ParametrizedConv1d breaks FlopCounterMode
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(
            torch.zeros(1, int(seconds * SAMPLE_RATE)),
            output_hidden_states=True,
        )
    return counter.get_total_flops() / seconds


def window_batches(samples):
    """The classifier's batches of windows of a long recording, as ``(B, T)`` tensors."""
    waveform = torch.from_numpy(samples).float()
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    bounds = window_bounds(len(waveform), window, window)
    windows = [waveform[start:end] for start, end in bounds]
    return [
        torch.nn.utils.rnn.pad_sequence(
            windows[first : first + BATCH_WINDOWS], batch_first=True
        )
        for first in range(0, len(windows), BATCH_WINDOWS)
    ]


def hf_forward(model, batches, precision):
    """Seconds of the bare Hugging Face eager forward over ``batches`` (layer-normed input)."""
    start = time.perf_counter()
    with torch.no_grad(), autocast(precision):
        for wavs in batches:
            normalized = torch.nn.functional.layer_norm(
                wavs, wavs.shape[-1:], eps=1e-5
            )
            model(normalized, output_hidden_states=True)
    return time.perf_counter() - start


def classify_seconds(classifier, path):
    start = time.perf_counter()
    classifier.classify_file(path)
    return time.perf_counter() - start


def profile_single_file(classifier, model, path, samples):
    """torch.profiler tables of one single-file call, Hugging Face forward then fast path."""
    from torch.profiler import ProfilerActivity, profile

    batches = window_batches(samples)
    for name, call in [
        (
            "bare Hugging Face eager forward",
            lambda: hf_forward(model, batches, "fp32"),
        ),
        (
            "classify_file with the fast path",
            lambda: classifier.classify_file(path),
        ),
    ]:
        call()
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            call()
        print(f"\nProfile: {name} (fp32, {torch.get_num_threads()} threads)")
        print(
            profiler.key_averages().table(
                sort_by="self_cpu_time_total", row_limit=12
            )
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(MODELS)
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=list(PRECISIONS),
        choices=list(PRECISIONS),
    )
    parser.add_argument(
        "--files", type=int, default=3, help="single files per round (median)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=WINDOW_SECONDS,
        help="single-file duration",
    )
    parser.add_argument(
        "--long_minutes",
        type=float,
        default=10.0,
        help="long-file duration (0: skip)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="interleaved rounds (best is kept)",
    )
    parser.add_argument(
        "--long_repeats",
        type=int,
        default=1,
        help="interleaved rounds of the long file",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the Vesper-4-sized single file",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("speechbrain").setLevel(logging.WARNING)

    rows = []
    matmul_best = {precision: 0.0 for precision in PRECISIONS}
    with tempfile.TemporaryDirectory() as work:
        encoder = CategoricalEncoder()
        encoder.update_from_iterable(LABELS)
        label_encoder_path = os.path.join(work, "label_encoder.txt")
        encoder.save(label_encoder_path)
        single_paths = [
            write_audio(os.path.join(work, f"single{i}.wav"), args.seconds, i)
            for i in range(args.files)
        ]
        single_samples = [
            soundfile.read(path, dtype="float32")[0] for path in single_paths
        ]
        tests = [("single file", single_paths, single_samples, args.seconds)]
        if args.long_minutes > 0:
            long_path = write_audio(
                os.path.join(work, "long.wav"), 60 * args.long_minutes, 99
            )
            long_samples = soundfile.read(long_path, dtype="float32")[0]
            tests.append(
                (
                    f"long file ({args.long_minutes:g} min)",
                    [long_path],
                    [long_samples],
                    60 * args.long_minutes,
                )
            )
        print(
            f"CPU, {torch.get_num_threads()} threads; single files {args.seconds} s (median of {args.files}), "
            f"long file {args.long_minutes:g} min in {WINDOW_SECONDS} s windows, batches of {BATCH_WINDOWS}; "
            f"best of {args.repeats} interleaved rounds"
        )

        for key in args.models:
            name, num_layers = MODELS[key]
            folder_root = os.path.join(work, key)
            if num_layers is None:
                folder = export_untrained_split(
                    "superb_fbank.yaml",
                    {"input_dim": 80, "num_upstream_layers": 1},
                    folder_root,
                    label_encoder_path,
                )
                model, flops_per_second = None, None
            else:
                source = save_wavlm_large_sized(
                    os.path.join(folder_root, "ssl"), num_layers
                )
                folder = export_untrained_split(
                    "superb_ssl.yaml",
                    {
                        "ssl_source": source,
                        "input_dim": 1024,
                        "num_upstream_layers": num_layers + 1,
                    },
                    folder_root,
                    label_encoder_path,
                )
                model = WavLMModel.from_pretrained(source).eval()
                flops_per_second = count_flops_per_second(source)
                print(
                    f"{name}: {flops_per_second / 1e9:.2f} GFLOP per second of audio"
                )
            for precision in args.precisions:
                classifier = EmotionClassifier.from_hparams(
                    source=folder,
                    savedir=folder,
                    run_opts={"device": "cpu", "precision": precision},
                )
                if args.profile and key == "vesper4" and precision == "fp32":
                    profile_single_file(
                        classifier, model, single_paths[0], single_samples[0]
                    )
                classifier.classify_file(
                    single_paths[0]
                )  # warm-up (weights prepared, caches)
                for label, paths, samples, seconds in tests:
                    batches = [window_batches(item) for item in samples]
                    best = {"ours": 0.0, "hf": 0.0}
                    rounds = (
                        args.long_repeats
                        if label.startswith("long")
                        else args.repeats
                    )
                    for _ in range(rounds):
                        ours, hf = [], []
                        for path, batch in zip(paths, batches):
                            ours.append(classify_seconds(classifier, path))
                            matmul_best[precision] = max(
                                matmul_best[precision],
                                matmul_gflops(PRECISIONS[precision]),
                            )
                            if model is not None:
                                hf.append(hf_forward(model, batch, precision))
                                matmul_best[precision] = max(
                                    matmul_best[precision],
                                    matmul_gflops(PRECISIONS[precision]),
                                )
                        best["ours"] = max(
                            best["ours"], seconds / statistics.median(ours)
                        )
                        if model is not None:
                            best["hf"] = max(
                                best["hf"], seconds / statistics.median(hf)
                            )
                    rows.append(
                        (name, label, precision, best, flops_per_second)
                    )
                    print(
                        f"  {name}, {label}, {precision}: ours {best['ours']:.2f}x real time, bare HF "
                        f"{best['hf']:.2f}x, best matmul so far {matmul_best[precision]:.0f} GFLOP/s",
                        flush=True,
                    )

    print()
    print(
        "| upstream | audio | precision | ours: x real time | ours: fraction of matmul | "
        "bare HF forward: x real time | HF: fraction of matmul | ours / HF | matmul GFLOP/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, label, precision, best, flops_per_second in rows:
        matmul = matmul_best[precision]
        if flops_per_second is not None:
            best["ours_fraction"] = (
                flops_per_second * best["ours"] / 1e9 / matmul
            )
            best["hf_fraction"] = flops_per_second * best["hf"] / 1e9 / matmul
            print(
                f"| {name} | {label} | {precision} | {best['ours']:.1f} | {best['ours_fraction']:.2f} | "
                f"{best['hf']:.1f} | {best['hf_fraction']:.2f} | {best['ours'] / best['hf']:.2f}x | {matmul:.0f} |"
            )
        else:
            print(
                f"| {name} | {label} | {precision} | {best['ours']:.1f} | - | - | - | - | {matmul:.0f} |"
            )
    print(
        "\nours: classify_file (read + resample + windows + fast-path upstream + classifier); bare HF: "
        "WavLMModel forward alone on the same windows. Fractions: upstream FLOPs x speed / best matmul "
        "GFLOP/s of the run."
    )
    return rows


if __name__ == "__main__":
    main()
