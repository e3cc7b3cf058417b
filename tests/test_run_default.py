"""The default run's step bookkeeping (scripts/run_default.py): folders named by the
command, completion markers, and steps that never outlive the script."""

import os
import signal
import subprocess
import sys
import time

import pytest
from prepare_helpers import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import run_default  # noqa: E402


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(
        f"/proc/{pid}/stat", encoding="utf-8"
    ) as handle:  # a zombie is dead
        return handle.read().split(")")[-1].split()[0] != "Z"


def test_another_epoch_count_trains_into_another_folder(tmp_path):
    work = str(tmp_path)
    one = run_default.step_folder(
        work, "3L-BAS", ["hparams/bas_ssl.yaml", "--number_of_epochs=1"]
    )
    twenty = run_default.step_folder(
        work, "3L-BAS", ["hparams/bas_ssl.yaml", "--number_of_epochs=20"]
    )
    assert one != twenty
    assert (
        run_default.step_folder(
            work, "3L-BAS", ["hparams/bas_ssl.yaml", "--number_of_epochs=1"]
        )
        == one
    )


def test_a_step_is_complete_only_after_it_succeeded(tmp_path, capsys):
    work = str(tmp_path)
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    marker = run_default.step_marker(work, "failing", failing)
    with pytest.raises(SystemExit):
        run_default.run(failing, marker=marker)
    assert not run_default.step_is_complete(marker)

    output = tmp_path / "out.txt"
    succeeding = [
        sys.executable,
        "-c",
        f"open({str(output)!r}, 'a').write('x')",
    ]
    marker = run_default.step_marker(work, "succeeding", succeeding)
    run_default.run(succeeding, marker=marker)
    assert run_default.step_is_complete(marker)
    run_default.run(
        succeeding, marker=marker
    )  # skipped: its marker says it is done
    assert output.read_text() == "x"
    assert "already done" in capsys.readouterr().out


def test_a_failed_step_stops_the_steps_still_running(tmp_path):
    sleeper = run_default.start(["sleep", "300"])
    failing = run_default.start(
        [sys.executable, "-c", "import sys; sys.exit(3)"]
    )
    with pytest.raises(SystemExit):
        run_default.wait_for(failing)
    assert sleeper.process.poll() is not None


KILLED_PARENT = """
import sys
sys.path.insert(0, {scripts!r})
import run_default, time
job = run_default.start(["sleep", "300"])
open({pid_file!r}, "w").write(str(job.process.pid))
time.sleep(300)
"""


def test_steps_die_with_a_killed_default_run(tmp_path):
    pid_file = str(tmp_path / "pid")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_PARENT.format(
                scripts=os.path.join(REPO_ROOT, "scripts"), pid_file=pid_file
            ),
        ],
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        cwd=REPO_ROOT,
    )
    deadline = time.time() + 120
    while (
        not (os.path.exists(pid_file) and open(pid_file).read())
        and time.time() < deadline
    ):
        time.sleep(0.1)
    child = int(open(pid_file).read())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child), "the step outlived the killed default run"


TERMINATED_PARENT = """
import sys
sys.path.insert(0, {scripts!r})
import run_default, signal
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, run_default._stop_on_signal)
import atexit
atexit.register(run_default.stop_all)
job = run_default.start(["sleep", "300"])
open({pid_file!r}, "w").write(str(job.process.pid))
run_default.wait_for(job)
"""


def test_a_terminated_default_run_stops_its_steps_and_exits(tmp_path):
    pid_file = str(tmp_path / "pid")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            TERMINATED_PARENT.format(
                scripts=os.path.join(REPO_ROOT, "scripts"), pid_file=pid_file
            ),
        ],
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        cwd=REPO_ROOT,
    )
    deadline = time.time() + 120
    while (
        not (os.path.exists(pid_file) and open(pid_file).read())
        and time.time() < deadline
    ):
        time.sleep(0.1)
    child = int(open(pid_file).read())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    assert not alive(child)
