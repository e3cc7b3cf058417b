#!/usr/bin/env python3
"""Vesper pretraining on unlabeled speech (LSSED or any folder / CSV list of audio).

    python recipes/LSSED/pretrain.py hparams/vesper4_pretrain.yaml \
        --data_folder=/path/to/audio --teacher_source=/path/to/wavlm-large-hf

Flow: prepare the manifests (``lssed_prepare.py``; its options such as ``--file_list``
or ``--valid_count`` go on the same command line) -> [optionally cache the teacher's
targets] -> pretrain the student (``VesperPretrainBrain``, resumable from its
checkpoints) -> export the student as a Hugging Face WavLM folder,
``<output_folder>/hf_export`` (``export_folder``), usable as ``--ssl_source`` by every
emotion recipe.

The output folder is locked while a run uses it and holds a ``fingerprint.json`` of what
produces its checkpoints and export (effective hparams, preparation options, manifest
hashes, teacher files, code): a re-run with anything changed is refused, naming the
differing keys (see :mod:`ser_modules.fingerprint`).

Multi-GPU: ``torchrun --standalone --nproc_per_node=8 recipes/LSSED/pretrain.py ...``
(``batch_size`` is per process); on CPU add ``--device=cpu --distributed_backend=gloo``.
See ``recipes/LSSED/README.md``.
"""

import contextlib
import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from lssed_prepare import prepare_lssed

from ser_modules import recipe
from ser_modules.audio import crop_or_pad, load_audio, seconds_to_samples
from ser_modules.fingerprint import (
    FolderLock,
    check_fingerprint,
    code_version,
    file_sha256,
    plain_hparams,
    text_sha256,
)
from ser_modules.vesper.export import export_to_huggingface
from ser_modules.vesper.pretraining import VesperPretrainBrain, crop_seed

logger = logging.getLogger(__name__)

CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def build_datasets(hparams, csv_paths, target_cache=None):
    """Waveform datasets cropped to ``crop_seconds`` (and the cached targets, if any).

    Training crops are drawn with ``train_crop_mode`` ("random": a window seeded by the
    seed, the epoch and the utterance, see :func:`crop_seed`); validation always takes
    the first ``crop_seconds``.
    """
    num_samples = seconds_to_samples(
        hparams["crop_seconds"], hparams["sample_rate"]
    )
    epoch_counter = hparams["epoch_counter"]
    datasets = {}
    for name in ("train", "valid"):
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(
            csv_paths[name], replacements={"data_root": hparams["data_folder"]}
        )
        mode = hparams["train_crop_mode"] if name == "train" else "first"

        @sb.utils.data_pipeline.takes("id", "wav")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(utterance_id, path, mode=mode):
            generator = None
            if mode == "random":
                seed = crop_seed(
                    hparams["seed"], epoch_counter.current, utterance_id
                )
                generator = torch.Generator().manual_seed(seed)
            return crop_or_pad(
                load_audio(path, hparams["sample_rate"]),
                num_samples,
                mode=mode,
                generator=generator,
            )

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


def build_target_cache(hparams, run_opts, csv_paths):
    """Compute the teacher's targets of every utterance once (``precompute_teacher_targets``).

    The reference code's approach: the teacher never runs during training, at the cost
    of disk space (LSSED, 5 s crops, WavLM Large, float16: about 150 GB).
    """
    from ser_modules.feature_cache import FeatureCache
    from ser_modules.manifest import read_csv

    if hparams["train_crop_mode"] != "first":
        raise ValueError(
            "precompute_teacher_targets=True needs train_crop_mode=first: cached targets belong to "
            "one fixed crop, and a random crop would change them every epoch."
        )
    if hparams["target_cache_dtype"] not in CACHE_DTYPES:
        raise ValueError(
            f"target_cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {hparams['target_cache_dtype']!r}."
        )
    target_cache = FeatureCache(
        hparams["target_cache_folder"],
        hparams["modules"]["teacher"],
        crop_seconds=hparams["crop_seconds"],
        crop_mode="first",
        dtype=CACHE_DTYPES[hparams["target_cache_dtype"]],
        precision=run_opts.get("precision") or "fp32",
    )
    rows = [
        row for name in ("train", "valid") for row in read_csv(csv_paths[name])
    ]
    # Forked: building the cache leaves the random state of training (masks, dropout) as
    # it is, so training on cached targets draws what training on online targets draws.
    with torch.random.fork_rng(devices=[]):
        sb.utils.distributed.run_on_main(
            target_cache.build,
            kwargs={
                "rows": rows,
                "replacements": {"data_root": hparams["data_folder"]},
                "batch_size": hparams["batch_size"],
                "device": run_opts.get("device")
                or sb.utils.distributed.infer_device(),
                "num_workers": hparams["num_workers"],
            },
        )
    # Every process reads the cache, keyed by audio content: bind the IDs to their files
    # (the main process already did, in build).
    target_cache.bind(rows, {"data_root": hparams["data_folder"]})
    return target_cache


def check_dimensions(hparams):
    """The predictors' width must be the teacher's (1024 for WavLM Large)."""
    teacher_dim = hparams["teacher"].config.hidden_size
    if hparams["encoder_dim"] != teacher_dim:
        raise ValueError(
            f"encoder_dim={hparams['encoder_dim']} but the teacher {hparams['teacher_source']} has "
            f"hidden_size={teacher_dim}: pass --encoder_dim={teacher_dim}."
        )


def main(argv):
    """Prepare, pretrain and export (see the module docstring); returns the export folder."""
    prepare_kwargs, argv = recipe.split_preparation_arguments(
        argv, prepare_lssed
    )
    hparams_file, run_opts, overrides = recipe.parse_arguments(argv)
    overrides = recipe.parse_overrides(overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as handle:
        yaml_text = handle.read()
    recipe.check_override_types(yaml_text, overrides, hparams_file)
    hparams = load_hyperpyyaml(yaml_text, overrides)
    check_dimensions(hparams)
    main_process = sb.utils.distributed.if_main_process()
    lock = (
        FolderLock(hparams["output_folder"], what="this output folder")
        if main_process
        else contextlib.nullcontext()
    )
    with lock:
        return pretrain(
            hparams,
            yaml_text,
            overrides,
            run_opts,
            hparams_file,
            prepare_kwargs,
        )


def pretraining_fingerprint(
    hparams, yaml_text, overrides, prepare_kwargs, csv_paths
):
    """What produces the checkpoints and the export of a pretraining output folder."""
    output_folder = hparams["output_folder"]
    return {
        "hparams_file_sha256": text_sha256(yaml_text),
        "hparams": plain_hparams(hparams, exclude_prefixes=[output_folder]),
        "overrides": plain_hparams(overrides, exclude_prefixes=[output_folder]),
        "preparation": prepare_kwargs,
        "manifests": {
            name: file_sha256(path) for name, path in sorted(csv_paths.items())
        },
        "teacher": hparams["modules"]["teacher"].identity(),
        "code": code_version(),
    }


def pretraining_has_results(hparams):
    """Whether an output folder already holds checkpoints or an export."""

    def has_results(folder):
        del folder
        save, export = hparams["save_folder"], hparams["export_folder"]
        return os.path.isdir(export) or (
            os.path.isdir(save)
            and any(n.startswith("CKPT") for n in os.listdir(save))
        )

    return has_results


def pretrain(
    hparams, yaml_text, overrides, run_opts, hparams_file, prepare_kwargs
):
    """Prepare, pretrain and export while the output folder is locked."""
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    # 1. Manifests of the unlabeled audio (given, found with skip_prep, or written once
    #    and skipped when unchanged).
    splits = recipe.fold_manifests(
        prepare_lssed,
        prepare_kwargs,
        data_folder=hparams["data_folder"],
        prepare_folder=hparams["prepare_folder"],
        skip_prep=hparams["skip_prep"],
        given={"train": hparams["train_csv"], "valid": hparams["valid_csv"]},
    )
    csv_paths = splits["main"]
    if sb.utils.distributed.if_main_process():
        check_fingerprint(
            hparams["output_folder"],
            pretraining_fingerprint(
                hparams, yaml_text, overrides, prepare_kwargs, csv_paths
            ),
            f"The Vesper pretraining in {hparams['output_folder']}",
            has_results=pretraining_has_results(hparams),
        )
    sb.utils.distributed.ddp_barrier()

    # 2. Teacher targets: online (default) or cached once.
    modules = dict(hparams["modules"])
    target_cache = None
    if hparams["precompute_teacher_targets"]:
        target_cache = build_target_cache(hparams, run_opts, csv_paths)
        del modules[
            "teacher"
        ]  # never runs during training: keep it off the device
    datasets = build_datasets(hparams, csv_paths, target_cache)

    # 3. Pretraining (resumes from the latest checkpoint in save_folder).
    brain = VesperPretrainBrain(
        modules=modules,
        opt_class=hparams["opt_class"],
        masker=hparams["masker"],
        lr_schedule=hparams["lr_schedule"],
        train_logger=hparams["train_logger"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    # 4. Export the selected checkpoint as a Hugging Face WavLM folder.
    export_folder = hparams["export_folder"]
    if sb.utils.distributed.if_main_process():
        selection = hparams["export_checkpoint"]
        if selection == "best":
            brain.checkpointer.recover_if_possible(min_key="loss")
        elif selection == "last":
            brain.checkpointer.recover_if_possible()
        else:
            raise ValueError(
                f"export_checkpoint must be 'best' or 'last', got {selection!r}."
            )
        checkpoint = brain.checkpointer.find_checkpoint(
            min_key="loss" if selection == "best" else None
        )
        encoder = hparams["student_encoder"]
        export_to_huggingface(encoder, export_folder)
        epoch = (
            int(checkpoint.meta["epoch"])
            if checkpoint is not None and "epoch" in checkpoint.meta
            else None
        )
        print(
            f"Exported Vesper-{encoder.num_layers} ({selection} checkpoint, epoch {epoch}) to {export_folder}"
        )
    sb.utils.distributed.ddp_barrier()
    return export_folder


if __name__ == "__main__":
    main(sys.argv[1:])
