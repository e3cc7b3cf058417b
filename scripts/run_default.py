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

A step is skipped only when its completion marker ``<work_folder>/stages/<step>/fingerprint.json``
exists and records the same command and code (a marker is written after the step
succeeded); an interrupted default run resumes from the unfinished steps. The output
folder of every pretraining and training step is named after a hash of its command
(``3L-BAS-1a2b3c4d``), so ``--epochs=20`` after ``--epochs=1`` trains and reports new runs
instead of finding the old ones. Steps run in their own process groups, which die with
this script (killed, interrupted or failed), and the work folder is locked while it runs.
The numbers on a random-teacher mini corpus only show that the machinery works; the
README explains how to run the real recipes.
"""

import argparse
import atexit
import collections
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ser_modules.fingerprint import FolderLock, check_fingerprint, code_version  # noqa: E402

PR_SET_PDEATHSIG = 1  # linux/prctl.h
RUNNING = {}  # pid -> Job still running


def run(command, log_path=None, marker=None):
    """Run one user-facing command from the project root; stop with its output on failure."""
    job = start(command, log_path, marker=marker)
    if job is not None:
        wait_for(job)


Job = collections.namedtuple(
    "Job", "process log log_path started printable marker"
)


def _in_own_group_dying_with_parent():
    """(Child, before exec) own process group, and SIGTERM when this script dies."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(
            PR_SET_PDEATHSIG, signal.SIGTERM
        )
    except (
        OSError,
        AttributeError,
    ):  # not Linux: the signal handlers and atexit still stop it
        pass


def signal_all(signum=signal.SIGTERM):
    """Send ``signum`` to every running step's process group (no waiting: safe in a handler)."""
    for job in list(RUNNING.values()):
        try:
            os.killpg(job.process.pid, signum)
        except ProcessLookupError:
            pass


def stop_all():
    """Terminate every running step's process group, wait for them (then kill what is left)."""
    signal_all(signal.SIGTERM)
    deadline = time.time() + 10
    for pid, job in list(RUNNING.items()):
        try:
            job.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(job.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            job.process.wait()
        RUNNING.pop(pid, None)


def _stop_on_signal(signum, frame):
    # Only signal here: the interrupted Popen.wait holds the lock a second wait would need.
    # The SystemExit unwinds it, and atexit's stop_all then waits for the steps.
    del frame
    signal_all(signal.SIGTERM)
    sys.exit(128 + signum)


def step_marker(work, name, command, log_path=None):
    """``(marker path, fingerprint)`` of a step: its command (work folder written as <work>) and code."""
    printable = [argument.replace(work, "<work>") for argument in command[1:]]
    code = code_version()
    return os.path.join(work, "stages", name), {
        "command": printable,
        "log": log_path and log_path.replace(work, "<work>"),
        "code": {
            "package": code["package"],
            "sources_sha256": code["sources_sha256"],
        },
    }


def step_folder(work, name, arguments):
    """``<work>/<name>-<hash of the arguments>``: another command never lands in the same folder."""
    text = json.dumps(
        [argument.replace(work, "<work>") for argument in arguments]
    )
    return os.path.join(
        work, f"{name}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"
    )


def step_is_complete(marker):
    """Whether a step's completion marker exists with the same fingerprint (refused if it differs)."""
    folder, fingerprint = marker
    if not os.path.isfile(os.path.join(folder, "fingerprint.json")):
        return False
    check_fingerprint(
        folder, fingerprint, f"The default-run step {os.path.basename(folder)}"
    )
    return True


def start(command, log_path=None, env=None, marker=None):
    """Print a user-facing command and start it from the project root (output to ``log_path``).

    Returns None (and prints so) when the step's completion marker says it is done.
    """
    printable = " ".join(
        command[1:] if command[0] == sys.executable else command
    )
    print(
        f"\n$ python {printable}"
        if command[0] == sys.executable
        else f"\n$ {printable}",
        flush=True,
    )
    if marker is not None and step_is_complete(marker):
        print(f"  already done (completion marker {marker[0]})", flush=True)
        return None
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        env=env,
        preexec_fn=_in_own_group_dying_with_parent,
    )
    job = Job(process, log, log_path, time.time(), printable, marker)
    RUNNING[process.pid] = job
    return job


def wait_for(job):
    """Wait for a job from :func:`start`; on failure stop every other step and exit with its log tail.

    A step that succeeded gets its completion marker (the only proof that it finished).
    """
    if job is None:
        return
    returncode = job.process.wait()
    RUNNING.pop(job.process.pid, None)
    if job.log is not None:
        job.log.close()
    if returncode != 0:
        stop_all()
        if job.log_path is not None:
            with open(
                job.log_path, encoding="utf-8", errors="replace"
            ) as handle:
                print("".join(handle.readlines()[-40:]))
        sys.exit(
            f"A step failed (exit code {returncode}): {job.printable}\nFull log: {job.log_path or 'above'}."
        )
    if job.marker is not None:
        folder, fingerprint = job.marker
        check_fingerprint(
            folder,
            fingerprint,
            f"The default-run step {os.path.basename(folder)}",
        )
    print(
        f"  done in {time.time() - job.started:.0f} s"
        + (f" (log: {job.log_path})" if job.log_path else ""),
        flush=True,
    )


def main(argv=None):
    """Run the default pipeline (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work_folder", default=os.path.join("results", "default")
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=20,
        help="search and training epochs of each run",
    )
    parser.add_argument(
        "--pretrain_epochs",
        type=int,
        default=None,
        help="Vesper pretraining epochs (YAML default if unset)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = os.path.abspath(args.work_folder)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    atexit.register(stop_all)
    with FolderLock(work, what="this default-run work folder"):
        run_pipeline(args, work)


def run_pipeline(args, work):
    """The six steps (the work folder is locked)."""
    python = sys.executable
    started = time.time()

    def marked(name, command, log_path=None):
        return {"marker": step_marker(work, name, command, log_path)}

    corpus = os.path.join(work, "mini_corpus")
    print(
        "1. Mini emotional-speech corpus (4 emotions, 6 speakers, 192 utterances, 16 kHz), generated and seeded"
    )
    command = [
        python,
        "-c",
        f"from ser_modules.mini_corpus import generate_mini_corpus; generate_mini_corpus({corpus!r})",
    ]
    run(command, **marked("mini_corpus", command))

    print("\n2. Preparation: CSV manifests, speaker-grouped 5-fold")
    command = [
        python,
        "recipes/custom/custom_prepare.py",
        f"--data_folder={corpus}",
        f"--save_folder={os.path.join(work, 'prepared')}",
        "--labels_csv=labels.csv",
    ]
    run(command, **marked("prepared", command))

    teacher = os.path.join(work, "teacher")
    print(
        "\n3. Teacher: a tiny random WavLM (4 layers, 32 dims) standing in for WavLM Large"
    )
    command = [
        python,
        "-m",
        "ser_modules.upstreams.tiny",
        teacher,
        "--kind=wavlm",
        "--num_layers=4",
        "--hidden_size=32",
    ]
    run(command, **marked("teacher", command))

    print(
        "\n4. Vesper pretraining on the mini corpus, then export as a Hugging Face WavLM folder"
    )
    pretrain_arguments = [
        "hparams/vesper_tiny_pretrain.yaml",
        f"--data_folder={corpus}",
        f"--teacher_source={teacher}",
    ]
    if args.pretrain_epochs:
        pretrain_arguments.append(f"--number_of_epochs={args.pretrain_epochs}")
    vesper = step_folder(work, "vesper", pretrain_arguments)
    export = os.path.join(vesper, "hf_export")
    command = [
        python,
        "recipes/LSSED/pretrain.py",
        *pretrain_arguments,
        f"--output_folder={vesper}",
    ]
    log_path = f"{vesper}.log"
    run(
        command,
        log_path=log_path,
        **marked(os.path.basename(vesper), command, log_path),
    )

    print(
        "\n5. Emotion recognition on the frozen Vesper: BAS and the baselines, 5 folds each\n"
        "   (two lanes in parallel, one CPU thread each: the BAS search, and the three baselines;\n"
        "   the shared feature cache is locked: the lane that comes second waits for it)"
    )
    common = [
        f"--data_folder={corpus}",
        "--labels_csv=labels.csv",
        f"--ssl_source={export}",
        f"--cache_folder={os.path.join(work, 'feature_cache')}",
        "--num_heads=4",
        "--ffn_dim=128",
        f"--number_of_epochs={args.epochs}",
        "--batch_size=8",
        "--lr=0.02",
    ]
    runs = {
        "3L-BAS": [
            "hparams/bas_ssl.yaml",
            "--search_layers=3",
            f"--search_epochs={args.epochs}",
            "--search_lr=0.02",
        ],
        "3L-baseline": ["hparams/transformer_ssl.yaml", "--num_layers=3"],
        "simple-FFN": ["hparams/ffn_ssl.yaml"],
        "SUPERB classifier": ["hparams/superb_ssl.yaml"],
    }
    folders = {
        name: step_folder(
            work,
            name.replace(" ", "_"),
            [arguments[0], *common, *arguments[1:]],
        )
        for name, arguments in runs.items()
    }
    commands = {
        name: [
            python,
            "recipes/custom/train.py",
            arguments[0],
            *common,
            *arguments[1:],
            f"--output_folder={folders[name]}",
        ]
        for name, arguments in runs.items()
    }
    single_thread = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    first, *rest = runs

    def start_run(name):
        log_path = f"{folders[name]}.log"
        return start(
            commands[name],
            log_path,
            env=single_thread,
            **marked(os.path.basename(folders[name]), commands[name], log_path),
        )

    bas = start_run(first)
    for name in rest:
        wait_for(start_run(name))
    wait_for(bas)

    print("\n6. Report")
    report = os.path.join(work, "report.md")
    run(
        [
            python,
            "-m",
            "ser_modules.reports",
            *folders.values(),
            f"--out={report}",
            f"--figures={os.path.join(work, 'figures')}",
        ]
    )

    print(
        "\nResults on the mini corpus (speaker-grouped 5-fold, mean +/- std over the test folds):\n"
    )
    print(f"| {'model':<18} | {'WA':<15} | {'UA':<15} | {'WF1':<15} |")
    print(f"|{'-' * 20}|{'-' * 17}|{'-' * 17}|{'-' * 17}|")
    results = {}
    for name, folder in folders.items():
        with open(
            os.path.join(folder, "results.json"), encoding="utf-8"
        ) as handle:
            results[name] = json.load(handle)
        cells = [
            f"{results[name]['mean'][m]:.3f} +/- {results[name]['std'][m]:.3f}"
            for m in ("WA", "UA", "WF1")
        ]
        print(f"| {name:<18} | " + " | ".join(cells) + " |")
    print("\nArchitectures found by the BAS search (first layer first):")
    for fold, architecture in results[first]["search"]["architectures"].items():
        print(f"  {fold}: {' -> '.join(architecture)}")
    print("\nFigures:")
    for path in sorted(os.listdir(os.path.join(work, "figures"))):
        print(f"  {os.path.join(work, 'figures', path)}")
    print(
        f"\nReport: {report}\nFinished in {(time.time() - started) / 60:.1f} min."
    )


if __name__ == "__main__":
    main()
