"""Training-epoch time on cached features vs features computed on the fly, in one run.

The upstream is a random WavLM with the WavLM Base shape (12 layers, 768 dims; the default
``WavLMConfig``) saved to a temporary folder and loaded through ``HuggingFaceUpstream``,
as in every recipe. The data is the generated mini corpus (192 utterances, 1.5-3.5 s).
The downstream is the SUPERB classifier on the weighted sum of all 13 hidden states,
trained with ``EmotionBrain`` exactly as ``hparams/superb_wavlm.yaml`` wires it.

Measured, for one training epoch over the corpus (forward, loss, backward, SGD step):

* on the fly: the upstream runs on every batch (``use_cache=False``),
* cached: features read from the feature cache (fp16 on disk),
* and, once, the cost of building the cache (one upstream pass over the corpus),

and printed: both epoch times, their ratio (target >= 20x), and after how many epochs the
cache has paid for itself.

Run::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_cache_vs_onthefly.py [--utterances 96]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import speechbrain as sb  # noqa: E402
import torch  # noqa: E402
from hyperpyyaml import load_hyperpyyaml  # noqa: E402
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel  # noqa: E402

from ser_modules.feature_cache import FeatureCache  # noqa: E402
from ser_modules.manifest import read_csv, write_csv  # noqa: E402
from ser_modules.mini_corpus import generate_mini_corpus  # noqa: E402
from ser_modules.training import EmotionBrain, build_datasets, build_label_encoder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_epoch(hparams, datasets, modules, folder):
    """Seconds for one training epoch (no validation) of a fresh EmotionBrain."""
    brain = EmotionBrain(
        modules=modules, opt_class=hparams["opt_class"], hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=None,
    )
    loader = sb.dataio.dataloader.make_dataloader(datasets["train"], **hparams["train_dataloader_opts"])
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    started = time.perf_counter()
    for batch in loader:
        brain.fit_batch(batch)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=96, help="utterances of the mini corpus to train on")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "mini")
        generate_mini_corpus(corpus)
        source = os.path.join(tmp, "wavlm_base_shape")
        WavLMModel(WavLMConfig()).save_pretrained(source)
        Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(source)

        from recipes_custom_prepare import prepare_custom  # noqa: E402  (path set below)

        splits = prepare_custom(corpus, os.path.join(tmp, "prepared"), labels_csv="labels.csv", split="stratified")
        csvs = dict(splits["main"]) if "main" in splits else dict(next(iter(splits.values())))
        rows = read_csv(csvs["train"])[: args.utterances]
        write_csv(os.path.join(tmp, "train_subset.csv"), rows)
        csvs["train"] = os.path.join(tmp, "train_subset.csv")
        replacements = {"data_root": corpus, "prep_root": os.path.join(tmp, "prepared")}
        encoder = build_label_encoder([csvs["train"]], os.path.join(tmp, "labels.txt"))

        with open(os.path.join(ROOT, "hparams", "superb_wavlm.yaml"), encoding="utf-8") as handle:
            yaml_text = handle.read()
        overrides = {
            "data_folder": corpus, "ssl_source": source, "output_folder": os.path.join(tmp, "out"),
            "batch_size": args.batch_size, "num_classes": len(encoder), "input_dim": 768,
            "num_upstream_layers": 13, "crop_seconds": 6.5,
        }
        hparams = load_hyperpyyaml(yaml_text, overrides)
        upstream = hparams["upstream"]()
        audio_seconds = sum(min(float(row["duration"]), 6.5) for row in rows)
        print(f"Upstream: random WavLM Base shape (12 layers, 768 dims), {sum(p.numel() for p in upstream.parameters()) / 1e6:.1f} M parameters")
        print(f"Training set: {len(rows)} utterances, {audio_seconds:.0f} s of audio, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads")

        cache = FeatureCache(os.path.join(tmp, "cache"), upstream, crop_seconds=6.5, crop_mode="first", precision="fp32")
        started = time.perf_counter()
        cache.build(rows=rows, replacements=replacements, batch_size=args.batch_size, device="cpu")
        build_seconds = time.perf_counter() - started

        cached_sets = build_datasets(csvs, replacements, encoder, feature_caches={"train": cache, "eval": cache}, crop_seconds=6.5)
        cached = one_epoch(hparams, cached_sets, dict(hparams["modules"]), tmp)

        hparams = load_hyperpyyaml(yaml_text, overrides)  # fresh downstream weights
        live_sets = build_datasets(csvs, replacements, encoder, crop_seconds=6.5)
        live = one_epoch(hparams, live_sets, {**hparams["modules"], "upstream": upstream}, tmp)

    print()
    print("| what | seconds |")
    print("|---|---|")
    print(f"| building the cache (once) | {build_seconds:.2f} |")
    print(f"| training epoch, features on the fly | {live:.2f} |")
    print(f"| training epoch, cached features | {cached:.3f} |")
    print()
    print(f"Cached epoch speed-up: {live / cached:.1f}x (target >= 20x)")
    print(f"The cache pays for itself after {build_seconds / max(live - cached, 1e-9):.2f} epochs; "
          f"a 50-epoch fine-tuning costs {build_seconds + 50 * cached:.0f} s instead of {50 * live:.0f} s "
          f"({50 * live / (build_seconds + 50 * cached):.1f}x less).")


if __name__ == "__main__":
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "recipes_custom_prepare", os.path.join(ROOT, "recipes", "custom", "custom_prepare.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["recipes_custom_prepare"] = module
    main()
