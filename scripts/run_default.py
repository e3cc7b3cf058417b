"""The embedded default: the whole pipeline of both papers on a generated mini corpus.

Needs no corpus and no downloaded weights; runs in a few minutes on 2 CPU cores::

    .venv/bin/python scripts/run_default.py [--work_folder=results/default] [--epochs=20]

Every step is the command a user would type for a real corpus (printed before it runs):

1. generate the mini emotional-speech corpus (``ser_modules.mini_corpus``),
2. prepare it with the custom-corpus preparation (speaker-grouped 5-fold CSV manifests),
3. save a tiny random WavLM as the teacher (stand-in for WavLM Large),
4. pretrain a tiny Vesper from it on the mini corpus (energy-guided masking, L_l + L_h +
   L_x) and export it as a Hugging Face WavLM folder,
5. with the exported Vesper as frozen upstream (features cached once, shared by all runs):
   BAS search of a 3-layer super net -> derive -> retrain -> test on every fold, and the
   baselines of BAS Table 1 (3-layer transformer, simple FFN) plus the SUPERB classifier,
6. collect the runs into one table with ``python -m ser_modules.reports``.

Every step is skipped when its result exists, so an interrupted default run resumes.
The numbers on a random-teacher mini corpus only show that the machinery works; the
README explains how to run the real recipes.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(command, log_path=None):
    """Run one user-facing command from the project root; stop with its output on failure."""
    wait_for(start(command, log_path))


Job = collections.namedtuple("Job", "process log log_path started printable")


def start(command, log_path=None, env=None):
    """Print a user-facing command and start it from the project root (output to ``log_path``)."""
    printable = " ".join(command[1:] if command[0] == sys.executable else command)
    print(f"\n$ python {printable}" if command[0] == sys.executable else f"\n$ {printable}", flush=True)
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT if log else None,
                               env=env)
    return Job(process, log, log_path, time.time(), printable)


def wait_for(job):
    """Wait for a job from :func:`start`; stop the default run with its log tail if it failed."""
    returncode = job.process.wait()
    if job.log is not None:
        job.log.close()
    if returncode != 0:
        if job.log_path is not None:
            with open(job.log_path, encoding="utf-8", errors="replace") as handle:
                print("".join(handle.readlines()[-40:]))
        sys.exit(f"A step failed (exit code {returncode}): {job.printable}\nFull log: {job.log_path or 'above'}.")
    print(f"  done in {time.time() - job.started:.0f} s" + (f" (log: {job.log_path})" if job.log_path else ""),
          flush=True)


def main(argv=None):
    """Run the default pipeline (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_folder", default=os.path.join("results", "default"))
    parser.add_argument("--epochs", type=int, default=20, help="search and training epochs of each run")
    parser.add_argument("--pretrain_epochs", type=int, default=None, help="Vesper pretraining epochs (YAML default if unset)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = os.path.abspath(args.work_folder)
    os.makedirs(work, exist_ok=True)
    python = sys.executable
    started = time.time()

    corpus = os.path.join(work, "mini_corpus")
    print("1. Mini emotional-speech corpus (4 emotions, 6 speakers, 192 utterances, 16 kHz), generated and seeded")
    run([python, "-c", f"from ser_modules.mini_corpus import generate_mini_corpus; generate_mini_corpus({corpus!r})"])

    print("\n2. Preparation: CSV manifests, speaker-grouped 5-fold")
    run([python, "recipes/custom/custom_prepare.py", f"--data_folder={corpus}",
         f"--save_folder={os.path.join(work, 'prepared')}", "--labels_csv=labels.csv"])

    teacher = os.path.join(work, "teacher")
    print("\n3. Teacher: a tiny random WavLM (4 layers, 32 dims) standing in for WavLM Large")
    if not os.path.isfile(os.path.join(teacher, "config.json")):
        run([python, "-m", "ser_modules.upstreams.tiny", teacher, "--kind=wavlm", "--num_layers=4", "--hidden_size=32"])

    vesper = os.path.join(work, "vesper")
    export = os.path.join(vesper, "hf_export")
    print("\n4. Vesper pretraining on the mini corpus, then export as a Hugging Face WavLM folder")
    pretrain = [python, "recipes/LSSED/pretrain.py", "hparams/vesper_tiny_pretrain.yaml", f"--data_folder={corpus}",
                f"--teacher_source={teacher}", f"--output_folder={vesper}"]
    if args.pretrain_epochs:
        pretrain.append(f"--number_of_epochs={args.pretrain_epochs}")
    run(pretrain, log_path=os.path.join(work, "vesper_pretrain.log"))

    print("\n5. Emotion recognition on the frozen Vesper: BAS and the baselines, 5 folds each\n"
          "   (two lanes in parallel, one CPU thread each: the BAS search, and the three baselines)")
    common = [f"--data_folder={corpus}", "--labels_csv=labels.csv", f"--ssl_source={export}",
              f"--cache_folder={os.path.join(work, 'feature_cache')}", "--num_heads=4", "--ffn_dim=128",
              f"--number_of_epochs={args.epochs}", "--batch_size=8", "--lr=0.02"]
    runs = {
        "3L-BAS": ["hparams/bas_vesper.yaml", "--search_layers=3", f"--search_epochs={args.epochs}",
                   "--search_lr=0.02"],
        "3L-baseline": ["hparams/transformer_vesper.yaml", "--num_layers=3"],
        "simple-FFN": ["hparams/ffn_vesper.yaml"],
        "SUPERB classifier": ["hparams/superb_vesper.yaml"],
    }
    folders = {name: os.path.join(work, name.replace(" ", "_")) for name in runs}
    commands = {
        name: ([python, "recipes/custom/train.py", arguments[0], *common, *arguments[1:],
                f"--output_folder={folders[name]}"], f"{folders[name]}.log")
        for name, arguments in runs.items()
    }
    single_thread = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    first, *rest = runs
    cache_built = os.path.isdir(os.path.join(work, "feature_cache"))
    bas = start(*commands[first], env=single_thread)
    if not cache_built:
        # The feature cache is built once: let the BAS run fill it alone, then start the
        # baselines lane, which shares it.
        while bas.process.poll() is None:
            log_text = _read(bas.log_path)
            if "already cached" in log_text or "Cached " in log_text:
                break
            time.sleep(1)
        if bas.process.poll() not in (None, 0):
            wait_for(bas)  # the BAS run failed before caching: stop with its log
    for name in rest:
        wait_for(start(*commands[name], env=single_thread))
    wait_for(bas)

    print("\n6. Report")
    report = os.path.join(work, "report.md")
    run([python, "-m", "ser_modules.reports", *folders.values(), f"--out={report}", f"--figures={os.path.join(work, 'figures')}"])

    print("\nResults on the mini corpus (speaker-grouped 5-fold, mean +/- std over the test folds):\n")
    print(f"| {'model':<18} | {'WA':<15} | {'UA':<15} | {'WF1':<15} |")
    print(f"|{'-' * 20}|{'-' * 17}|{'-' * 17}|{'-' * 17}|")
    results = {}
    for name, folder in folders.items():
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as handle:
            results[name] = json.load(handle)
        cells = [f"{results[name]['mean'][m]:.3f} +/- {results[name]['std'][m]:.3f}" for m in ("WA", "UA", "WF1")]
        print(f"| {name:<18} | " + " | ".join(cells) + " |")
    print("\nArchitectures found by the BAS search (first layer first):")
    for fold, architecture in results[first]["search"]["architectures"].items():
        print(f"  {fold}: {' -> '.join(architecture)}")
    print("\nFigures:")
    for path in sorted(os.listdir(os.path.join(work, "figures"))):
        print(f"  {os.path.join(work, 'figures', path)}")
    print(f"\nReport: {report}\nFinished in {(time.time() - started) / 60:.1f} min.")


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


if __name__ == "__main__":
    main()
