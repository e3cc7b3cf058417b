#!/usr/bin/env python3
"""Vesper pretraining on unlabeled speech (LSSED or any folder / CSV of audio).

    python recipes/LSSED/pretrain.py hparams/vesper4_pretrain.yaml \
        --data_folder=/path/to/audio --teacher_source=/path/to/wavlm-large-hf

Multi-GPU: ``torchrun --standalone --nproc_per_node=8 recipes/LSSED/pretrain.py ...``
(``batch_size`` is per process). At the end the best checkpoint (validation loss) is
exported as a Hugging Face WavLM folder, ``<output_folder>/vesper_hf``, usable as
``--ssl_source`` by every emotion recipe.
"""

import logging
import math
import os
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from lssed_prepare import prepare_lssed

from ser_modules.audio import crop_or_pad, load_audio, seconds_to_samples
from ser_modules.recipe import parse_overrides, split_preparation_arguments
from ser_modules.vesper.export import export_to_huggingface
from ser_modules.vesper.pretraining import VesperPretrainBrain

logger = logging.getLogger(__name__)


def build_datasets(hparams, csv_paths, target_cache=None):
    """Waveform datasets cropped to ``crop_seconds`` (random window in training)."""
    num_samples = seconds_to_samples(hparams["crop_seconds"], hparams["sample_rate"])
    datasets = {}
    for name in ("train", "valid"):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_paths[name], replacements={"data_root": hparams["data_folder"]}
        )
        mode = hparams["train_crop_mode"] if name == "train" else "first"

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(path, mode=mode):
            return crop_or_pad(load_audio(path, hparams["sample_rate"]), num_samples, mode=mode)

        dataset.add_dynamic_item(audio_pipeline)
        keys = ["id", "sig"]
        if target_cache is not None:
            @sb.utils.data_pipeline.takes("id")
            @sb.utils.data_pipeline.provides("targets")
            def target_pipeline(utterance_id):
                return target_cache.load(utterance_id)  # (T, 2, D)

            dataset.add_dynamic_item(target_pipeline)
            keys.append("targets")
        dataset.set_output_keys(keys)
        datasets[name] = dataset
    return datasets


def main(argv):
    prepare_kwargs, argv = split_preparation_arguments(argv, prepare_lssed)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    overrides = parse_overrides(overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    splits = sb.utils.distributed.run_on_main(
        prepare_lssed,
        kwargs={"data_folder": hparams["data_folder"], "save_folder": hparams["prepare_folder"],
                "skip_prep": hparams["skip_prep"], **prepare_kwargs},
    )
    csv_paths = splits["main"]

    target_cache = None
    if hparams["precompute_teacher_targets"]:
        if hparams["train_crop_mode"] != "first":
            raise ValueError(
                "precompute_teacher_targets=True needs train_crop_mode=first: a random crop "
                "changes the teacher's targets every epoch."
            )
        from ser_modules.feature_cache import FeatureCache
        from ser_modules.manifest import read_csv

        target_cache = FeatureCache(
            hparams["target_cache_folder"], hparams["modules"]["teacher"],
            crop_seconds=hparams["crop_seconds"], crop_mode="first",
        )
        rows = [row for name in ("train", "valid") for row in read_csv(csv_paths[name])]
        sb.utils.distributed.run_on_main(
            target_cache.build,
            kwargs={"rows": rows, "replacements": {"data_root": hparams["data_folder"]},
                    "batch_size": hparams["batch_size"], "device": run_opts.get("device", "cpu"),
                    "precision": hparams["target_cache_precision"]},
        )
    datasets = build_datasets(hparams, csv_paths, target_cache)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    hparams["steps_per_epoch"] = math.ceil(len(datasets["train"]) / hparams["batch_size"] / world_size)
    brain = VesperPretrainBrain(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts=run_opts, checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"], datasets["train"], datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    if sb.utils.distributed.if_main_process():
        brain.checkpointer.recover_if_possible(min_key="loss")
        encoder = hparams["student_encoder"]
        export_to_huggingface(encoder, hparams["export_folder"])
        print(f"Exported Vesper-{encoder.num_layers} (best validation loss) to {hparams['export_folder']}")


if __name__ == "__main__":
    main(sys.argv[1:])
