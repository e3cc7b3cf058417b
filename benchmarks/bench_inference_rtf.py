"""Inference speed of exported model folders: seconds of audio classified per second.

For three upstreams, each with the SUPERB classifier (``hparams/superb_*.yaml``):

* Fbank (80 log-Mel bands, the CPU baseline),
* a tiny random WavLM (``ser_modules.upstreams.tiny``: 32 dims, 2 layers),
* a Vesper-4-sized random WavLM (WavLM Large's CNN and width: 1024 dims, 4 layers,
  16 heads, FFN 4096; ``ser_modules.vesper.encoder.wavlm_large_config(4)``),

it checkpoints the untrained split, exports it with
:func:`ser_modules.inference.export_model_folder` (the folder a recipe writes), loads it
with ``EmotionClassifier.from_hparams`` and times ``classify_file`` on a set of wav files
(default 10 x 6.5 s, one window each), in fp32 and under bf16 autocast (SpeechBrain's
``precision`` run option). Reading and resampling the files is included: it is the path
``python -m ser_modules.infer`` takes. One untimed file warms each model up first.

The "speed" column is seconds of audio per second of compute (the inverse of the
real-time factor): 10 means a minute of audio is classified in 6 s.

Run::

    PYTHONPATH=. python benchmarks/bench_inference_rtf.py [--files 10] [--seconds 6.5] [--threads 2]
"""

import argparse
import logging
import os
import tempfile
import time

import numpy as np
import soundfile
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from transformers import Wav2Vec2FeatureExtractor, WavLMModel

from ser_modules.inference import EmotionClassifier, export_model_folder
from ser_modules.upstreams.tiny import save_tiny_model
from ser_modules.vesper.encoder import wavlm_large_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 16000
LABELS = ["angry", "happy", "neutral", "sad"]
PRECISIONS = ("fp32", "bf16")


def save_vesper4_sized_model(folder):
    """A random WavLM with Vesper-4's architecture, as a Hugging Face folder."""
    torch.manual_seed(0)
    WavLMModel(wavlm_large_config(num_hidden_layers=4)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def export_untrained_split(hparams_file, overrides, work_folder, label_encoder_path):
    """Checkpoint the untrained modules of a recipe's YAML and export a model folder."""
    with open(os.path.join(REPO_ROOT, "hparams", hparams_file), encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, {
            "data_folder": work_folder, "output_folder": os.path.join(work_folder, "run"),
            "num_classes": len(LABELS), **overrides,
        })
    if "input_norm" in hparams.get("modules", {}):
        # Give the global normalisation statistics (one update, as in the first epoch).
        hparams["input_norm"].train()
        hparams["input_norm"](torch.randn(2, 50, hparams["input_dim"]), torch.ones(2), epoch=1)
    checkpoint = hparams["checkpointer"].save_checkpoint()
    return export_model_folder(hparams, checkpoint, label_encoder_path, os.path.join(work_folder, "model"))


def write_audio(folder, num_files, seconds):
    """``num_files`` noise-like wav files of ``seconds`` at 16 kHz."""
    generator = np.random.default_rng(0)
    paths = []
    for index in range(num_files):
        path = os.path.join(folder, f"utt{index:02d}.wav")
        soundfile.write(path, 0.1 * generator.standard_normal(int(seconds * SAMPLE_RATE)), SAMPLE_RATE)
        paths.append(path)
    return paths


def time_classification(model_folder, paths, precision):
    """Seconds to classify every file one by one (after one warm-up file)."""
    classifier = EmotionClassifier.from_hparams(
        source=model_folder, savedir=model_folder, run_opts={"device": "cpu", "precision": precision}
    )
    classifier.classify_file(paths[0])
    start = time.perf_counter()
    for path in paths:
        classifier.classify_file(path)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=6.5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("speechbrain").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as work:
        encoder = CategoricalEncoder()
        encoder.update_from_iterable(LABELS)
        label_encoder_path = os.path.join(work, "label_encoder.txt")
        encoder.save(label_encoder_path)
        os.makedirs(os.path.join(work, "audio"))
        paths = write_audio(os.path.join(work, "audio"), args.files, args.seconds)
        audio_seconds = args.files * args.seconds

        tiny = save_tiny_model(os.path.join(work, "tiny_wavlm"), kind="wavlm", num_layers=2)
        vesper4 = save_vesper4_sized_model(os.path.join(work, "vesper4_sized"))
        setups = [
            ("Fbank", "superb_fbank.yaml", {"input_dim": 80, "num_upstream_layers": 1}),
            ("tiny WavLM (32 d, 2 layers)", "superb_wavlm.yaml",
             {"ssl_source": tiny, "input_dim": 32, "num_upstream_layers": 3}),
            ("Vesper-4-sized WavLM (1024 d, 4 layers)", "superb_wavlm.yaml",
             {"ssl_source": vesper4, "input_dim": 1024, "num_upstream_layers": 5}),
        ]
        print(
            f"{args.files} files x {args.seconds} s = {audio_seconds:.0f} s of audio, classified file by file "
            f"(read + resample + windows + model), CPU, {torch.get_num_threads()} threads"
        )
        print()
        print("| upstream + SUPERB classifier | precision | compute s | audio s / compute s | ms per file |")
        print("|---|---|---|---|---|")
        speeds = {}
        for name, hparams_file, overrides in setups:
            folder = export_untrained_split(hparams_file, overrides, os.path.join(work, name.split()[0]),
                                            label_encoder_path)
            for precision in PRECISIONS:
                seconds = time_classification(folder, paths, precision)
                speeds[name, precision] = audio_seconds / seconds
                print(
                    f"| {name} | {precision} | {seconds:.2f} | {audio_seconds / seconds:.1f} | "
                    f"{1000 * seconds / args.files:.0f} |"
                )
        print()
        for name, _, _ in setups:
            print(f"{name}: bf16 / fp32 speed = {speeds[name, 'bf16'] / speeds[name, 'fp32']:.2f}x")


if __name__ == "__main__":
    main()
