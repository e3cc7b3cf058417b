"""Tiny random WavLM / HuBERT models saved as local Hugging Face folders.

They stand in for WavLM Large or HuBERT Large where no weights can be downloaded: in the
tests, in the embedded default run (``scripts/run_default.py``) and in the benchmarks. The
shapes follow the real models where it matters to the pipeline (a 320-sample hop, i.e. 50
frames per second at 16 kHz, layer-norm CNN, pre-LN encoder, relative position buckets
for WavLM); only the widths and depth are small.

Command line::

    python -m ser_modules.upstreams.tiny DIR [--kind=wavlm|hubert] [--hidden_size=32] [--num_layers=2]
"""

import argparse

import torch
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2FeatureExtractor,
    WavLMConfig,
    WavLMModel,
)

KINDS = {
    "wavlm": (WavLMConfig, WavLMModel),
    "hubert": (HubertConfig, HubertModel),
}


def tiny_config(
    kind="wavlm",
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=None,
):
    """A small config of ``kind`` with the real models' 320-sample hop (one CNN layer)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}: use one of {sorted(KINDS)}.")
    config_class, _ = KINDS[kind]
    options = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        conv_dim=(16, 16),
        conv_kernel=(400, 1),
        conv_stride=(320, 1),
        conv_bias=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    if kind == "wavlm":
        options.update(num_buckets=32, max_bucket_distance=64)
    return config_class(**options)


def save_tiny_model(folder, kind="wavlm", seed=0, **config_options):
    """Save a random tiny ``kind`` model and its feature extractor config into ``folder``.

    Returns
    -------
    str
        ``folder``, ready for ``--ssl_source``.
    """
    config = tiny_config(kind, **config_options)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = KINDS[kind][1](config)
    finally:
        torch.set_rng_state(generator_state)
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return str(folder)


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Save a tiny random WavLM/HuBERT as a Hugging Face folder."
    )
    parser.add_argument("folder")
    parser.add_argument("--kind", default="wavlm", choices=sorted(KINDS))
    parser.add_argument("--hidden_size", type=int, default=32)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = save_tiny_model(
        args.folder,
        kind=args.kind,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
    )
    print(f"Saved a tiny random {args.kind} model in {path}")


if __name__ == "__main__":
    main()
