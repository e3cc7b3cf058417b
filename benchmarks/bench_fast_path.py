"""The fast upstream path against the bare Hugging Face forward on one clip, robust to load.

On a shared machine, wall-clock time depends on what other jobs do; the CPU time this
process actually gets (``time.process_time``) depends far less on it. For a random model of
the chosen size (``--model vesper4``: WavLM Large's CNN and width, 4 layers; ``large``: 24
layers), on one ``--seconds`` clip, it measures interleaved, best of ``--repeats`` rounds:

* the Hugging Face eager forward (``output_hidden_states=True``), fp32 and under bf16 autocast;
* the fast path (:class:`~ser_modules.upstreams.fast_wavlm.FastSSLForward`), fp32 and bf16;
* 1024 x 1024 matmuls ``a @ b.T`` in fp32 and bf16 (the throughput ceiling);

in CPU seconds and in wall seconds, and prints the speed per core (audio seconds per CPU
second), the wall-clock speed, the model GFLOP/s (``FlopCounterMode`` count, 2 FLOPs per
multiply-add) and its fraction of the matmul throughput measured the same way, plus the
fast / Hugging Face ratios and the largest relative difference of the hidden states.

Run::

    PYTHONPATH=. python benchmarks/bench_fast_path.py [--model vesper4] [--threads 1] [--repeats 3]
"""

import argparse
import contextlib
import time

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode
from transformers import WavLMModel

from ser_modules.upstreams.fast_wavlm import FastSSLForward, max_relative_error
from ser_modules.vesper.encoder import wavlm_large_config

SAMPLE_RATE = 16000
LAYERS = {"vesper4": 4, "large": 24}


def model_flops(model, wavs):
    """FLOPs of one forward, counted on a copy without the weight-norm parametrisation."""
    counted = WavLMModel(model.config).eval()
    counted.load_state_dict(model.state_dict())
    for (
        module
    ) in counted.modules():  # ParametrizedConv1d breaks FlopCounterMode
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        counted(wavs, output_hidden_states=True)
    return counter.get_total_flops()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vesper4", choices=sorted(LAYERS))
    parser.add_argument("--seconds", type=float, default=6.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WavLMModel(wavlm_large_config(LAYERS[args.model])).eval()
    fast = FastSSLForward(model)
    wavs = 0.1 * torch.randn(1, int(args.seconds * SAMPLE_RATE))
    flops = model_flops(model, wavs)
    matrices = {
        dtype: (
            torch.randn(1024, 1024, dtype=dtype),
            torch.randn(1024, 1024, dtype=dtype),
        )
        for dtype in (torch.float32, torch.bfloat16)
    }
    matmul_calls = 10

    def matmuls(dtype):
        a, b = matrices[dtype]
        for _ in range(matmul_calls):
            a @ b.T

    def hf(precision):
        context = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with context:
            return model(wavs, output_hidden_states=True).hidden_states

    calls = {
        ("Hugging Face", "fp32"): lambda: hf("fp32"),
        ("fast path", "fp32"): lambda: fast(wavs),
        ("Hugging Face", "bf16"): lambda: hf("bf16"),
        ("fast path", "bf16"): lambda: fast(wavs, dtype=torch.bfloat16),
        ("matmul", "fp32"): lambda: matmuls(torch.float32),
        ("matmul", "bf16"): lambda: matmuls(torch.bfloat16),
    }
    cpu = {key: float("inf") for key in calls}
    wall = {key: float("inf") for key in calls}
    outputs = {}
    with torch.no_grad():
        for key, call in calls.items():
            outputs[key] = call()  # warm-up (prepares the fast path's weights)
        for _ in range(args.repeats):
            for key, call in calls.items():
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                call()
                cpu[key] = min(cpu[key], time.process_time() - cpu_start)
                wall[key] = min(wall[key], time.perf_counter() - wall_start)

    matmul_flops = matmul_calls * 2 * 1024**3
    print(
        f"{args.model}-sized random WavLM, one {args.seconds:g} s clip, {flops / 1e9:.1f} GFLOP "
        f"({flops / 1e9 / args.seconds:.2f} per audio second), {args.threads} thread(s), "
        f"best of {args.repeats} interleaved rounds"
    )
    print()
    print(
        "| path | precision | CPU s | audio s per CPU s | wall s | x real time (wall) | "
        "GFLOP per CPU s | matmul GFLOP per CPU s | fraction of matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in ("Hugging Face", "fast path"):
        for precision in ("fp32", "bf16"):
            key = (path, precision)
            achieved = flops / cpu[key] / 1e9
            ceiling = matmul_flops / cpu[("matmul", precision)] / 1e9
            print(
                f"| {path} | {precision} | {cpu[key]:.3f} | {args.seconds / cpu[key]:.2f} | {wall[key]:.3f} | "
                f"{args.seconds / wall[key]:.2f} | {achieved:.0f} | {ceiling:.0f} | {achieved / ceiling:.2f} |"
            )
    print()
    reference = outputs[("Hugging Face", "fp32")]
    for precision in ("fp32", "bf16"):
        print(
            f"{precision}: fast / Hugging Face {cpu[('Hugging Face', precision)] / cpu[('fast path', precision)]:.2f}x "
            f"(CPU time), {wall[('Hugging Face', precision)] / wall[('fast path', precision)]:.2f}x (wall); "
            f"max |a - b| / max |b| vs fp32 Hugging Face: fast {max_relative_error(outputs[('fast path', precision)], reference):.1e}, "
            f"Hugging Face {max_relative_error(outputs[('Hugging Face', precision)], reference):.1e}"
        )
    print(
        f"fast bf16 / Hugging Face fp32: {cpu[('Hugging Face', 'fp32')] / cpu[('fast path', 'bf16')]:.2f}x (CPU time)"
    )
    return cpu, wall


if __name__ == "__main__":
    main()
