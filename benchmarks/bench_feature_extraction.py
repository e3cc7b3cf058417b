"""Feature-extraction throughput of a WavLM-Base-sized upstream, fp32 vs bf16 autocast.

Builds a random WavLM with the default ``WavLMConfig`` (the WavLM Base architecture:
12 layers, 768 dims, group-norm CNN, so utterances run one by one), saves it to a
temporary folder and loads it through :class:`HuggingFaceUpstream`, the path every
recipe uses. On a few utterances (about 20 s of audio in all) it measures, in one run:

* the model's FLOPs, counted with ``torch.utils.flop_counter.FlopCounterMode`` on a copy
  whose weight-norm parametrisation (positional conv) is removed, because
  ``ParametrizedConv1d`` breaks the counter;
* the throughput in seconds of audio per second, for fp32 and for bf16 autocast;
* the machine's matmul throughput (1024 x 1024, fp32 and bf16, with both operand layouts),
  and the fraction of the best of them that the extraction reaches.

FlopCounterMode counts 2 FLOPs per multiply-add; the Vesper paper's "FLOPs" (Table II)
are multiply-adds, half of this count.

Run::

    PYTHONPATH=. python benchmarks/bench_feature_extraction.py [--device cpu] [--repeats 1]
"""

import argparse
import contextlib
import statistics
import tempfile
import time

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

from ser_modules.upstreams import HuggingFaceUpstream

SAMPLE_RATE = 16000
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


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


def time_extraction(upstream, wavs, wav_lens, device, precision, repeats):
    """Median seconds of one upstream call over ``repeats`` (after one short warm-up)."""
    with autocast(device, precision):
        upstream(wavs[:1, :SAMPLE_RATE])
        durations = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            upstream(wavs, wav_lens)
            synchronize(device)
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seconds", type=float, nargs="+", default=[6.5, 5.5, 4.5, 3.5], help="utterance durations"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per precision (median)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        WavLMModel(WavLMConfig()).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
        upstream = HuggingFaceUpstream(folder, layers="all").to(device)
        flop_counting_copy = HuggingFaceUpstream(folder, layers="all").to(device)
    parameters = sum(parameter.numel() for parameter in upstream.parameters())

    lengths = torch.tensor([round(seconds * SAMPLE_RATE) for seconds in args.seconds])
    wavs = torch.randn(len(lengths), int(lengths.max()), device=device) * 0.1
    wav_lens = (lengths / lengths.max()).to(device)
    audio_seconds = float(lengths.sum()) / SAMPLE_RATE

    flops = count_flops(flop_counting_copy, wavs, wav_lens)
    del flop_counting_copy
    print(
        f"WavLM Base-sized upstream: {parameters / 1e6:.2f} M parameters, {len(lengths)} utterances, "
        f"{audio_seconds:.1f} s of audio, {flops / 1e9:.1f} GFLOP per pass "
        f"({flops / 1e9 / audio_seconds:.2f} GFLOP per audio second), "
        f"device {device}, {torch.get_num_threads()} CPU threads"
    )
    print()
    print(
        "| precision | s per pass | audio s / s | model GFLOP/s | matmul GFLOP/s a@b | "
        "matmul GFLOP/s a@b.T | fraction of the best matmul |"
    )
    print("|---|---|---|---|---|---|---|")
    results = {}
    for precision, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        plain = matmul_gflops(device, dtype, transposed=False)
        transposed = matmul_gflops(device, dtype, transposed=True)
        seconds = time_extraction(upstream, wavs, wav_lens, device, precision, args.repeats)
        achieved = flops / seconds / 1e9
        results[precision] = seconds
        print(
            f"| {precision} | {seconds:.2f} | {audio_seconds / seconds:.2f} | {achieved:.1f} | "
            f"{plain:.1f} | {transposed:.1f} | {achieved / max(plain, transposed):.2f} |"
        )
    print()
    print(f"bf16 autocast / fp32 throughput: {results['fp32'] / results['bf16']:.2f}x")


if __name__ == "__main__":
    main()
