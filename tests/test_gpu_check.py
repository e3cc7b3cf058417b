"""benchmarks/gpu_check.sh runs end to end on CPU with tiny sizes, so the GPU check cannot rot.

The script is run as a user would (bash, a fresh interpreter); the test reads back the
Markdown table it writes and checks its rows, that every figure is a positive number, and
that the projected LSSED hours follow from the measured steps per second.
"""

import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def table_rows(text):
    """``{first cell: [cells...]}`` of the Markdown table's body rows."""
    rows = {}
    for line in text.splitlines():
        if (
            line.startswith("|")
            and not line.startswith("|---")
            and not line.startswith("| measurement")
        ):
            cells = [
                cell.strip() for cell in line.strip().strip("|").split("|")
            ]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("gpu_check") / "table.md"
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [
            "bash",
            SCRIPT,
            str(output),
            "--device",
            "cpu",
            "--tiny",
            "--steps",
            "1",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output.read_text(encoding="utf-8")


def test_the_table_has_every_measurement_for_both_precisions(report):
    assert "| measurement | setting | bf16 | fp32 |" in report
    assert (
        "TINY sizes" in report
    )  # a CPU smoke run never passes for a measurement
    rows = table_rows(report)
    names = list(rows)
    assert [name.split(",")[0] for name in names] == [
        "Vesper-2 pretraining",
        "projected hours",
        "WavLM-Large extraction (fast path)",
        "WavLM-Large extraction (HF forward)",
        "BAS super-net search step",
    ]
    assert "failed" not in report
    for cells in rows.values():
        values = [float(cell.replace(",", "")) for cell in cells[1:]]
        assert len(values) == 2 and all(
            value > 0 and math.isfinite(value) for value in values
        )


def test_projected_hours_follow_from_the_measured_step_rate(report):
    rows = table_rows(report)
    rates = [
        float(cell)
        for cell in next(v for k, v in rows.items() if k.startswith("Vesper"))[
            1:
        ]
    ]
    hours = [
        float(cell)
        for cell in next(
            v for k, v in rows.items() if k.startswith("projected")
        )[1:]
    ]
    batch = int(
        re.search(
            r"at batch (\d+)",
            next(
                k + v[0] for k, v in rows.items() if k.startswith("projected")
            ),
        ).group(1)
    )
    steps_per_epoch = math.ceil(147025 / batch)
    assert f"{steps_per_epoch} steps/epoch" in next(
        v[0] for k, v in rows.items() if k.startswith("projected")
    )
    for rate, hour in zip(rates, hours):
        # rates are printed to 3 decimals: allow that rounding
        assert hour == pytest.approx(
            100 * steps_per_epoch / rate / 3600, rel=0.0005 / rate + 1e-3
        )


def test_without_a_gpu_the_cuda_check_says_what_to_do(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "gpu_check.py"),
            "--device",
            "cuda",
            "--output",
            str(tmp_path / "x.md"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert "No CUDA device" in completed.stderr and "--tiny" in completed.stderr
    assert not (tmp_path / "x.md").exists()
