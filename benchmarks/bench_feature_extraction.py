"""Batched feature-extraction throughput, fast path vs Hugging Face forward, fp32 vs bf16.

Builds a random WavLM (``--model``: ``large`` = WavLM Large shape, 24 layers, 1024 dims, the
default; ``vesper4`` = the same with 4 layers; ``base`` = WavLM Base shape, 12 layers, 768
dims, group-norm CNN, so utterances run one by one), saves it to a temporary folder and loads
it twice through :class:`HuggingFaceUpstream`, the path every recipe and the feature cache
use: with the fast path (``fast_path=True``, the default) and with the Hugging Face forward
(``fast_path=False``, the reference). On a padded batch of a few utterances (about 20 s of
audio in all) it measures, in one run:

* the model's FLOPs, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
  reference path of a copy whose weight-norm parametrisation (positional conv) is removed,
  because ``ParametrizedConv1d`` breaks the counter;
* the throughput in seconds of audio per second of both paths, for fp32 and for bf16
  autocast, interleaved (fast, HF, fast, HF ...) so that load from other jobs hits both;
* the machine's matmul throughput (1024 x 1024, fp32 and bf16, both operand layouts),
  measured between the timings, and the fraction of the best of them each path reaches.

FlopCounterMode counts 2 FLOPs per multiply-add; the Vesper paper's "FLOPs" (Table II)
are multiply-adds, half of this count.

Run::

    PYTHONPATH=. python benchmarks/bench_feature_extraction.py [--model large] [--device cpu] [--repeats 2]
"""

import argparse
import contextlib
import tempfile
import time

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2FeatureExtractor, WavLMModel

from ser_modules.upstreams import HuggingFaceUpstream
from ser_modules.vesper.encoder import wavlm_base_config, wavlm_large_config

SAMPLE_RATE = 16000
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
MODELS = {
    "large": (lambda: wavlm_large_config(24), True, "WavLM Large-sized"),
    "vesper4": (lambda: wavlm_large_config(4), True, "Vesper-4-sized"),
    "base": (wavlm_base_config, False, "WavLM Base-sized"),
}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def matmul_gflops(device, dtype, transposed, size=1024, seconds=1.0):
    """Measured GFLOP/s of ``size x size`` matmuls ``a @ b`` (2 size^3 FLOPs each).

    ``transposed`` multiplies by a transposed view, the layout of ``nn.Linear`` weights:
    on CPUs without native bf16 the two layouts take different kernels (about 20x apart).
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    if transposed:
        b = b.T
    torch.matmul(a, b)
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        calls += 1
        synchronize(device)
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def count_flops(counted, wavs, wav_lens):
    """FLOPs of one upstream call; removes the weight-norm parametrisations of ``counted``.

    ``counted`` must be a separately loaded copy: ``copy.deepcopy`` shares the dynamically
    created ``ParametrizedConv1d`` class, and removing the parametrisation from the copy
    deletes the ``weight`` property of the original too.
    """
    for module in counted.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    with FlopCounterMode(display=False) as counter:
        counted(wavs, wav_lens)
    return counter.get_total_flops()


def time_extraction(upstreams, wavs, wav_lens, device, precision, repeats):
    """Best seconds of one call of each upstream over ``repeats`` interleaved rounds.

    Also returns the best fp32/bf16 matmul GFLOP/s of the two layouts, measured after each
    round.
    """
    dtype = (
        torch.float32
        if PRECISIONS[precision] is None
        else PRECISIONS[precision]
    )
    best = [float("inf")] * len(upstreams)
    outputs = [None] * len(upstreams)
    matmul = 0.0
    with autocast(device, precision):
        for upstream in upstreams:
            upstream(wavs[:1, :SAMPLE_RATE])
        for _ in range(repeats):
            for index, upstream in enumerate(upstreams):
                synchronize(device)
                start = time.perf_counter()
                outputs[index] = upstream(wavs, wav_lens)[0]
                synchronize(device)
                best[index] = min(best[index], time.perf_counter() - start)
            matmul = max(
                matmul,
                matmul_gflops(device, dtype, False, seconds=0.5),
                matmul_gflops(device, dtype, True, seconds=0.5),
            )
    return best, matmul, outputs


def relative_error(feats, reference):
    """``max|a - b| / max|b|`` over all hidden states (the tests' tolerance measure)."""
    return float(
        (feats.float() - reference.float()).abs().max()
        / reference.float().abs().max()
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="large", choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seconds",
        type=float,
        nargs="+",
        default=[6.5, 5.5, 4.5, 3.5],
        help="utterance durations",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="interleaved rounds per precision (best kept)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default)",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    make_config, normalize, label = MODELS[args.model]
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        WavLMModel(make_config()).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(do_normalize=normalize).save_pretrained(folder)
        fast = HuggingFaceUpstream(folder, layers="all").to(device)
        reference = HuggingFaceUpstream(
            folder, layers="all", fast_path=False
        ).to(device)
        flop_counting_copy = HuggingFaceUpstream(
            folder, layers="all", fast_path=False
        ).to(device)
    parameters = sum(parameter.numel() for parameter in fast.parameters())

    lengths = torch.tensor(
        [round(seconds * SAMPLE_RATE) for seconds in args.seconds]
    )
    wavs = torch.randn(len(lengths), int(lengths.max()), device=device) * 0.1
    wav_lens = (lengths / lengths.max()).to(device)
    audio_seconds = float(lengths.sum()) / SAMPLE_RATE

    flops = count_flops(flop_counting_copy, wavs, wav_lens)
    del flop_counting_copy
    print(
        f"{label} upstream: {parameters / 1e6:.2f} M parameters, {len(lengths)} utterances in one padded batch, "
        f"{audio_seconds:.1f} s of audio, {flops / 1e9:.1f} GFLOP per pass "
        f"({flops / 1e9 / audio_seconds:.2f} GFLOP per audio second), all {fast.num_layers} hidden states, "
        f"device {device}, {torch.get_num_threads()} CPU threads, best of {args.repeats} interleaved rounds"
    )
    print()
    print(
        "| precision | path | s per pass | audio s / s | model GFLOP/s | best matmul GFLOP/s | "
        "fraction of matmul |"
    )
    print("|---|---|---|---|---|---|---|")
    results, outputs = {}, {}
    for precision in PRECISIONS:
        (
            (fast_s, reference_s),
            matmul,
            (outputs[precision, "fast"], outputs[precision, "hf"]),
        ) = time_extraction(
            [fast, reference], wavs, wav_lens, device, precision, args.repeats
        )
        for path, seconds in [
            ("fast path", fast_s),
            ("Hugging Face forward", reference_s),
        ]:
            achieved = flops / seconds / 1e9
            results[precision, path] = seconds
            print(
                f"| {precision} | {path} | {seconds:.2f} | {audio_seconds / seconds:.2f} | {achieved:.1f} | "
                f"{matmul:.1f} | {achieved / matmul:.2f} |"
            )
    print()
    for precision in PRECISIONS:
        print(
            f"{precision}: fast path / Hugging Face throughput "
            f"{results[precision, 'Hugging Face forward'] / results[precision, 'fast path']:.2f}x"
        )
    exact = outputs["fp32", "hf"]
    print(
        "max |a - b| / max |b| against the fp32 Hugging Face forward, all hidden states: "
        f"fast fp32 {relative_error(outputs['fp32', 'fast'], exact):.1e}, "
        f"fast bf16 {relative_error(outputs['bf16', 'fast'], exact):.1e}, "
        f"Hugging Face under bf16 autocast {relative_error(outputs['bf16', 'hf'], exact):.1e}"
    )
    print(
        f"fast path: bf16 autocast / fp32 throughput "
        f"{results['fp32', 'fast path'] / results['bf16', 'fast path']:.2f}x"
    )


if __name__ == "__main__":
    main()
