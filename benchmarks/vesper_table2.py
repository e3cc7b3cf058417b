"""Reproduce Table II of the Vesper paper: parameters and FLOPs of WavLM Base / Large and Vesper-4 / 12.

Run::

    PYTHONPATH=. python benchmarks/vesper_table2.py

Models are built on the meta device (shapes only: no weights, no compute), and one
utterance of each fine-tuning crop length (IEMOCAP 6.5 s, MELD 4.5 s, CREMA-D 3.0 s) is
counted with ``torch.utils.flop_counter.FlopCounterMode``. Three numbers per crop:

* ``FLOPs``: FlopCounterMode's total, 2 operations per multiply-accumulate (MAC), every
  convolution and matrix product, attention scores and weighted sums included;
* ``MACs conv+linear``: multiply-accumulates of the convolutions and linear layers
  only, the convention of module-hook counters such as thop, which do not see the
  attention products computed inside ``F.multi_head_attention_forward``;
* ``paper``: Table II. The paper's "FLOPs" match the second column.

The printed ratios (ours / paper) are measured in this run.
"""

import argparse

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode
from transformers import WavLMModel

from ser_modules.vesper.encoder import (
    VesperEncoder,
    count_encoder_parameters,
    count_wavlm_pretraining_parameters,
    wavlm_base_config,
    wavlm_large_config,
)

SAMPLING_RATE = 16000
CROPS = {"IEMOCAP": 6.5, "MELD": 4.5, "CREMA-D": 3.0}  # seconds
# Table II: parameters (M) and FLOPs (G) on the IEMOCAP / MELD / CREMA-D crops.
PAPER = {
    "WavLM Base": (94.70, (45.15, 31.23, 20.79)),
    "Vesper-4": (63.52, (35.16, 24.33, 16.20)),
    "WavLM Large": (316.62, (116.75, 80.74, 53.72)),
    "Vesper-12": (164.29, (67.80, 46.89, 31.21)),
}
# Operators that are convolutions or linear layers (nn.Linear lowers to addmm, or mm without bias).
CONV_AND_LINEAR_OPS = ("aten.convolution", "aten.addmm", "aten.mm")


def build_models():
    """The four Table II models on the meta device, with their parameter counts.

    WavLM rows count the published way (encoder + pretraining prediction head, see
    ``count_wavlm_pretraining_parameters``); Vesper rows count the encoder.

    Returns
    -------
    dict[str, tuple[torch.nn.Module, int]]
    """
    with torch.device("meta"):
        models = {
            "WavLM Base": WavLMModel(wavlm_base_config()),
            # No waveform normalisation: it reads lengths, which meta tensors do not have,
            # and it is an elementwise op that FlopCounterMode does not count anyway.
            "Vesper-4": VesperEncoder(
                wavlm_large_config(4), normalize_waveform=False
            ),
            "WavLM Large": WavLMModel(wavlm_large_config(24)),
            "Vesper-12": VesperEncoder(
                wavlm_large_config(12), normalize_waveform=False
            ),
        }
    counts = {
        "WavLM Base": count_wavlm_pretraining_parameters(
            wavlm_base_config(), final_dim=256
        ),
        "Vesper-4": count_encoder_parameters(models["Vesper-4"]),
        "WavLM Large": count_wavlm_pretraining_parameters(
            wavlm_large_config(24), final_dim=768
        ),
        "Vesper-12": count_encoder_parameters(models["Vesper-12"]),
    }
    for model in models.values():
        # FlopCounterMode cannot read the weight of transformers' weight-norm
        # ParametrizedConv1d; a plain Conv1d has the same cost.
        parametrize.remove_parametrizations(
            model.encoder.pos_conv_embed.conv, "weight", leave_parametrized=True
        )
        model.eval()
    return {name: (models[name], counts[name]) for name in models}


def count_flops(model, seconds):
    """FLOPs of one utterance of ``seconds`` seconds.

    Arguments
    ---------
    model : torch.nn.Module
        Takes a (1, S) waveform.
    seconds : float

    Returns
    -------
    total_flops : int
        All counted operators, 2 per MAC.
    conv_linear_macs : int
        Multiply-accumulates of convolutions and linear layers only.
    """
    wavs = torch.zeros(
        1, round(seconds * SAMPLING_RATE), device="meta"
    )  # (1, S)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(wavs)
    per_operator = {
        str(op): flops
        for op, flops in counter.get_flop_counts()["Global"].items()
    }
    conv_linear_flops = sum(
        per_operator.get(op, 0) for op in CONV_AND_LINEAR_OPS
    )
    return counter.get_total_flops(), conv_linear_flops // 2


def main():
    """Print Table II as Markdown, ours next to the paper's."""
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    header = "| model | params (M) | paper | " + " | ".join(
        f"{name} {seconds} s: FLOPs (G) / MACs conv+linear (G) / paper (G)"
        for name, seconds in CROPS.items()
    )
    print(header + " |")
    print("|" + "---|" * (3 + len(CROPS)))
    ratios = []
    for name, (model, parameters) in build_models().items():
        paper_parameters, paper_flops = PAPER[name]
        cells = [name, f"{parameters / 1e6:.2f}", f"{paper_parameters:.2f}"]
        for seconds, paper in zip(CROPS.values(), paper_flops):
            total, macs = count_flops(model, seconds)
            cells.append(f"{total / 1e9:.2f} / {macs / 1e9:.2f} / {paper:.2f}")
            ratios.append(
                (name, seconds, macs / 1e9 / paper, total / 1e9 / paper)
            )
        print("| " + " | ".join(cells) + " |")
    print()
    print("| model | crop (s) | MACs conv+linear / paper | FLOPs / paper |")
    print("|---|---|---|---|")
    for name, seconds, macs_ratio, flops_ratio in ratios:
        print(f"| {name} | {seconds} | {macs_ratio:.4f} | {flops_ratio:.4f} |")


if __name__ == "__main__":
    main()
