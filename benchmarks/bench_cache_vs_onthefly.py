"""Training-epoch time on cached features vs features computed on the fly, in one run.

The upstream is a random WavLM with the WavLM Large shape (``--upstream large``, the default:
24 layers, 1024 dims, 25 hidden states, the upstream the papers use) or the WavLM Base shape
(``--upstream base``: 12 layers, 768 dims), saved to a temporary folder and loaded through
``HuggingFaceUpstream`` (with its fast CPU path), as in every recipe. The data is the
generated mini corpus (1.5-3.5 s utterances). The downstream is the SUPERB classifier on the
weighted sum of all hidden states, trained with ``EmotionBrain`` exactly as
``hparams/superb_ssl.yaml`` wires it.

Measured, for one training epoch over ``--utterances`` utterances (forward, loss, backward,
SGD step):

* on the fly: the upstream runs on every batch (``use_cache=False``),
* cached: features read from the feature cache (fp16 on disk),
* and, once, the cost of building the cache (one upstream pass over the corpus),

and printed: both epoch times, their ratio (target >= 100x for the Large shape), the split of
each epoch's time (waiting for the data loader / upstream forward / the rest of the step),
and after how many epochs the cache has paid for itself.

Run::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_cache_vs_onthefly.py [--upstream large] [--utterances 32]
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
from ser_modules.training import (  # noqa: E402
    EmotionBrain,
    build_datasets,
    build_label_encoder,
)
from ser_modules.vesper.encoder import wavlm_large_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SHAPES = {
    # name: (config, hidden states, label)
    "large": (
        lambda: wavlm_large_config(24),
        25,
        "WavLM Large shape (24 layers, 1024 dims)",
    ),
    "base": (WavLMConfig, 13, "WavLM Base shape (12 layers, 768 dims)"),
}


class TimedUpstream(torch.nn.Module):
    """The upstream, with the seconds spent in its forward added up (for the time split)."""

    def __init__(self, upstream):
        super().__init__()
        self.inner = upstream
        self.seconds = 0.0

    def forward(self, wavs, wav_lens=None):
        started = time.perf_counter()
        try:
            return self.inner(wavs, wav_lens)
        finally:
            self.seconds += time.perf_counter() - started


def one_epoch(hparams, datasets, modules, folder):
    """One training epoch (no validation) of a fresh EmotionBrain.

    Returns
    -------
    dict
        ``total``, ``loading`` (waiting for the next batch) and ``upstream`` seconds.
    """
    brain = EmotionBrain(
        modules=modules,
        opt_class=hparams["opt_class"],
        lr_scheduler=hparams["lr_scheduler"],
        train_logger=hparams["train_logger"],
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=None,
    )
    loader = sb.dataio.dataloader.make_dataloader(
        datasets["train"], **hparams["train_dataloader_opts"]
    )
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    brain.modules.train()
    loading = 0.0
    started = time.perf_counter()
    batches = iter(loader)
    while True:
        waited = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            break
        loading += time.perf_counter() - waited
        brain.fit_batch(batch)
    upstream = modules.get("upstream")
    return {
        "total": time.perf_counter() - started,
        "loading": loading,
        "upstream": upstream.seconds
        if isinstance(upstream, TimedUpstream)
        else 0.0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--upstream",
        default="large",
        choices=sorted(SHAPES),
        help="random upstream's shape",
    )
    parser.add_argument(
        "--utterances",
        type=int,
        default=96,
        help="utterances of the mini corpus to train on",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    make_config, num_states, shape_label = SHAPES[args.upstream]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "mini")
        generate_mini_corpus(corpus)
        source = os.path.join(tmp, f"wavlm_{args.upstream}_shape")
        config = make_config()
        WavLMModel(config).save_pretrained(source)
        Wav2Vec2FeatureExtractor(
            do_normalize=False, return_attention_mask=False
        ).save_pretrained(source)

        from recipes_custom_prepare import prepare_custom  # noqa: E402  (path set below)

        splits = prepare_custom(
            corpus,
            os.path.join(tmp, "prepared"),
            labels_csv="labels.csv",
            split="stratified",
        )
        csvs = (
            dict(splits["main"])
            if "main" in splits
            else dict(next(iter(splits.values())))
        )
        rows = read_csv(csvs["train"])[: args.utterances]
        write_csv(os.path.join(tmp, "train_subset.csv"), rows)
        csvs["train"] = os.path.join(tmp, "train_subset.csv")
        replacements = {
            "data_root": corpus,
            "prep_root": os.path.join(tmp, "prepared"),
        }
        encoder = build_label_encoder(
            [csvs["train"]], os.path.join(tmp, "labels.txt")
        )

        with open(
            os.path.join(ROOT, "hparams", "superb_ssl.yaml"), encoding="utf-8"
        ) as handle:
            yaml_text = handle.read()
        overrides = {
            "data_folder": corpus,
            "ssl_source": source,
            "output_folder": os.path.join(tmp, "out"),
            "batch_size": args.batch_size,
            "num_classes": len(encoder),
            "input_dim": config.hidden_size,
            "num_upstream_layers": num_states,
            "crop_seconds": 6.5,
        }
        hparams = load_hyperpyyaml(yaml_text, overrides)
        upstream = hparams["upstream"]()
        audio_seconds = sum(min(float(row["duration"]), 6.5) for row in rows)
        print(
            f"Upstream: random {shape_label}, {sum(p.numel() for p in upstream.parameters()) / 1e6:.1f} M parameters, "
            f"fast path {'on' if getattr(upstream, 'fast', None) is not None else 'off'}"
        )
        print(
            f"Training set: {len(rows)} utterances, {audio_seconds:.0f} s of audio, batch {args.batch_size}, "
            f"{torch.get_num_threads()} threads"
        )

        cache = FeatureCache(
            os.path.join(tmp, "cache"),
            upstream,
            crop_seconds=6.5,
            crop_mode="first",
            precision="fp32",
        )
        started = time.perf_counter()
        cache.build(
            rows=rows,
            replacements=replacements,
            batch_size=args.batch_size,
            device="cpu",
        )
        build_seconds = time.perf_counter() - started

        cached_sets = build_datasets(
            csvs,
            replacements,
            encoder,
            feature_caches={"train": cache, "eval": cache},
            crop_seconds=6.5,
        )
        cached = one_epoch(hparams, cached_sets, dict(hparams["modules"]), tmp)

        hparams = load_hyperpyyaml(
            yaml_text, overrides
        )  # fresh downstream weights
        live_sets = build_datasets(
            csvs, replacements, encoder, crop_seconds=6.5
        )
        live = one_epoch(
            hparams,
            live_sets,
            {**hparams["modules"], "upstream": TimedUpstream(upstream)},
            tmp,
        )

    print()
    print(
        "| what | seconds | waiting for data | upstream forward | rest of the steps |"
    )
    print("|---|---|---|---|---|")
    print(f"| building the cache (once) | {build_seconds:.2f} | | | |")
    for label, epoch in [
        ("training epoch, features on the fly", live),
        ("training epoch, cached features", cached),
    ]:
        rest = epoch["total"] - epoch["loading"] - epoch["upstream"]
        print(
            f"| {label} | {epoch['total']:.3f} | {epoch['loading']:.3f} | {epoch['upstream']:.3f} | {rest:.3f} |"
        )
    print()
    ratio = live["total"] / cached["total"]
    print(
        f"Cached epoch speed-up: {ratio:.1f}x (target >= 100x for the Large shape)"
    )
    downstream_only = live["total"] - live["upstream"]
    print(
        f"Bound: the cached epoch cannot be faster than the downstream steps; on-the-fly epoch / its "
        f"non-upstream part = {live['total'] / max(downstream_only, 1e-9):.1f}x."
    )
    print(
        f"The cache pays for itself after {build_seconds / max(live['total'] - cached['total'], 1e-9):.2f} epochs; "
        f"a 50-epoch fine-tuning costs {build_seconds + 50 * cached['total']:.0f} s instead of {50 * live['total']:.0f} s "
        f"({50 * live['total'] / (build_seconds + 50 * cached['total']):.1f}x less)."
    )


if __name__ == "__main__":
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "recipes_custom_prepare",
        os.path.join(ROOT, "recipes", "custom", "custom_prepare.py"),
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["recipes_custom_prepare"] = module
    main()
