"""Cost of a BAS search step on CPU, measured in one run.

(a) Time per training step (forward, cross-entropy, backward, SGD step) of the L-layer
    super net against the L-layer transformer baseline (``["msa_ffn"] * L``) of the same
    widths, on random features of modest size; prints both and their ratio. Every
    searchable layer runs its three candidates (``msa_ffn`` + ``msa`` + ``ffn`` ~ twice the
    work of one ``msa_ffn``), so a ratio near 2 is expected and above ~3.5 means overhead.
(b) One search step of the super net on WavLM-Large-sized features (1024-dim, 6.5 s =
    325 frames at 50 Hz, batch 32): milliseconds per step and peak memory.

Memory method: torch has no peak-allocation counter on CPU, so the benchmark reads the
kernel's resident-set high-water mark. Writing ``5`` to ``/proc/self/clear_refs`` resets
``VmHWM`` to the current RSS; after the step, ``VmHWM`` minus the RSS before the step is
the extra memory the step needed (activations, gradients, optimiser state). Linux only.

Usage::

    PYTHONPATH=. python benchmarks/bench_bas_search.py
    PYTHONPATH=. python benchmarks/bench_bas_search.py --layers 3 --large-batch 8
"""

import argparse
import re
import statistics
import time

import torch

from ser_modules.downstream.models import BlockStackClassifier
from ser_modules.downstream.supernet import BASSuperNet

PAPER_LEARNING_RATE = 0.005  # BAS paper 3.3: SGD, lr 0.005, batch 32


def random_batch(batch, frames, dim, num_classes, generator):
    """Random features, relative lengths in [0.5, 1] (longest = 1) and labels."""
    feats = torch.randn(batch, frames, dim, generator=generator)  # (B, T, D)
    lens = torch.rand(batch, generator=generator) * 0.5 + 0.5  # (B,)
    lens[0] = 1.0
    labels = torch.randint(num_classes, (batch,), generator=generator)  # (B,)
    return feats, lens, labels


def training_step(model, optimizer, feats, lens, labels):
    """One step of search or training: forward, loss, backward, update."""
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(feats, lens), labels)
    loss.backward()
    optimizer.step()


def interleaved_step_times(models, batch, steps, warmup):
    """Median milliseconds per training step of each model.

    Steps of the models alternate, so a change of machine load (other jobs on shared
    cores) hits every model alike and the ratios stay meaningful.
    """
    optimizers = [
        torch.optim.SGD(m.parameters(), lr=PAPER_LEARNING_RATE) for m in models
    ]
    for model in models:
        model.train()
    times = [[] for _ in models]
    for step in range(warmup + steps):
        for model, optimizer, model_times in zip(models, optimizers, times):
            start = time.perf_counter()
            training_step(model, optimizer, *batch)
            if step >= warmup:
                model_times.append(1000 * (time.perf_counter() - start))
    return [statistics.median(model_times) for model_times in times]


def resident_kib(field):
    """``VmRSS`` or ``VmHWM`` (peak RSS) of this process, in KiB."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def compare_supernet_with_baseline(args):
    """Part (a): step time of the super net against the vanilla transformer baseline."""
    generator = torch.Generator().manual_seed(0)
    batch = random_batch(
        args.batch, args.frames, args.dim, args.classes, generator
    )
    widths = dict(num_heads=args.heads, ffn_dim=args.ffn_dim, dropout=0.1)
    torch.manual_seed(0)
    supernet = BASSuperNet(args.dim, args.classes, args.layers, **widths)
    baseline = BlockStackClassifier(
        args.dim, args.classes, ["msa_ffn"] * args.layers, **widths
    )
    baseline_ms, supernet_ms = interleaved_step_times(
        [baseline, supernet], batch, args.steps, args.warmup
    )
    print(
        f"(a) {args.layers}L, features {args.batch} x {args.frames} x {args.dim}, "
        f"{args.heads} heads, FFN {args.ffn_dim}, median of {args.steps} interleaved steps"
    )
    print(
        f"    baseline {['msa_ffn'] * args.layers}: {baseline_ms:8.1f} ms/step"
    )
    print(
        f"    super net ({len(supernet.candidates)} candidates/layer): {supernet_ms:8.1f} ms/step"
    )
    print(
        f"    ratio super net / baseline: {supernet_ms / baseline_ms:.2f}x (target <= ~3.5x)"
    )


def measure_large_search_step(args):
    """Part (b): one super-net search step on WavLM-Large-sized features."""
    generator = torch.Generator().manual_seed(1)
    batch = random_batch(
        args.large_batch,
        args.large_frames,
        args.large_dim,
        args.classes,
        generator,
    )
    torch.manual_seed(0)
    supernet = BASSuperNet(
        args.large_dim,
        args.classes,
        args.layers,
        model_dim=args.large_model_dim,
        num_heads=args.heads,
        ffn_dim=args.large_ffn_dim,
        dropout=0.1,
    ).train()
    optimizer = torch.optim.SGD(supernet.parameters(), lr=PAPER_LEARNING_RATE)
    parameters = sum(p.numel() for p in supernet.parameters())
    times, extra_kib, peak_kib = [], [], []
    for _ in range(args.large_steps):
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write(
                "5"
            )  # reset the RSS high-water mark to the current RSS
        before_kib = resident_kib("VmRSS")
        start = time.perf_counter()
        training_step(supernet, optimizer, *batch)
        times.append(1000 * (time.perf_counter() - start))
        peak_kib.append(resident_kib("VmHWM"))
        extra_kib.append(peak_kib[-1] - before_kib)
    width = args.large_model_dim or args.large_dim
    print(
        f"(b) {args.layers}L super net, features {args.large_batch} x {args.large_frames} x "
        f"{args.large_dim} (model width {width}, {args.heads} heads, FFN {args.large_ffn_dim}, "
        f"{parameters / 1e6:.1f} M parameters), {torch.get_num_threads()} threads"
    )
    for index, (ms, extra, peak) in enumerate(
        zip(times, extra_kib, peak_kib), start=1
    ):
        print(
            f"    step {index}: {ms:9.1f} ms, step peak over pre-step RSS {extra / 2**20:6.2f} GiB, "
            f"process peak RSS {peak / 2**20:6.2f} GiB"
        )


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--layers", type=int, default=4, help="searchable layers L"
    )
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=256, help="(a) feature size")
    parser.add_argument(
        "--ffn-dim", type=int, default=1024, help="(a) FFN hidden size"
    )
    parser.add_argument("--batch", type=int, default=8, help="(a) batch size")
    parser.add_argument(
        "--frames", type=int, default=150, help="(a) frames per utterance"
    )
    parser.add_argument(
        "--steps", type=int, default=7, help="(a) timed steps per model"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="(a) untimed steps per model"
    )
    parser.add_argument(
        "--large-dim", type=int, default=1024, help="(b) feature size"
    )
    parser.add_argument(
        "--large-model-dim",
        type=int,
        default=None,
        help="(b) block width; default: the feature size, no input projection",
    )
    parser.add_argument(
        "--large-ffn-dim", type=int, default=2048, help="(b) FFN hidden size"
    )
    parser.add_argument(
        "--large-batch", type=int, default=32, help="(b) batch size"
    )
    parser.add_argument(
        "--large-frames",
        type=int,
        default=325,
        help="(b) frames (6.5 s at 50 Hz)",
    )
    parser.add_argument(
        "--large-steps", type=int, default=1, help="(b) steps, each reported"
    )
    parser.add_argument(
        "--skip-large", action="store_true", help="run part (a) only"
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    compare_supernet_with_baseline(arguments)
    if not arguments.skip_large:
        measure_large_search_step(arguments)
