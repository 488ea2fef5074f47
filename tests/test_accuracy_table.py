"""benchmarks/accuracy_table.py: a finished run is reused, not run again, and
--report-only rewrites the table from finished runs without running anything
(the full table takes hours, so it is assembled from runs kept across sessions)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "accuracy_table.py")
FASHION = "/usr/share/datasets/fashion-mnist"

pytestmark = pytest.mark.skipif(not os.path.isdir(FASHION),
                                reason="Fashion-MNIST (Debian's dataset-fashion-mnist) is not "
                                       "installed: `make apt` installs it")
TINY = ["--models", "lenet", "--no-torch", "--train-subset", "256", "--test-subset", "128",
        "--epochs-lenet", "1", "--threads", "1", "--warmup-steps", "1", "--backend", "ref"]


def _run(out, *extra):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, SCRIPT, *TINY, "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=300)


def test_report_only_reuses_finished_runs(tmp_path):
    r = _run(tmp_path, "--precisions", "fp32")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "accuracy-runs" / "lenet-fp32.json"
    first = json.loads(run.read_text())
    md = tmp_path / "accuracy.md"
    md.unlink()
    r = _run(tmp_path, "--precisions", "fp32", "--report-only")
    assert r.returncode == 0, r.stderr
    assert "result exists for this configuration, skipped" in r.stdout
    assert json.loads(run.read_text()) == first          # not run again
    assert f"| edgetrain fp32 | {first['test_acc']:.4f} |" in md.read_text()
    # every run says how busy the machine was and which code it ran
    assert 0.0 <= first["other_cpu_share"] <= 1.0
    assert f"| {100 * first['other_cpu_share']:.0f} |" in md.read_text()
    if first["code"][0]:                                   # None outside a git checkout
        assert f"`{first['code'][0]}`" in md.read_text()
    # a note a person adds to a kept result (what shared the machine) is in the table
    run.write_text(json.dumps(dict(first, notes=["ran beside a test suite"])))
    r = _run(tmp_path, "--precisions", "fp32", "--report-only")
    assert r.returncode == 0, r.stderr
    assert "- edgetrain fp32: ran beside a test suite" in md.read_text()
    # a run kept from before the share was measured: n/m, not 0
    run.write_text(json.dumps({k: v for k, v in first.items() if k != "other_cpu_share"}))
    r = _run(tmp_path, "--precisions", "fp32", "--report-only")
    assert r.returncode == 0, r.stderr
    assert "| n/m |" in md.read_text()
    run.write_text(json.dumps(first))
    # a configuration without a finished run: an error naming it, nothing run
    r = _run(tmp_path, "--precisions", "fp32,int8", "--report-only")
    assert r.returncode != 0
    assert "--report-only" in r.stderr and "lenet int8" in r.stderr
    assert not (tmp_path / "accuracy-runs" / "lenet-int8.json").exists()
    r = _run(tmp_path, "--precisions", "fp32", "--report-only", "--force")
    assert r.returncode == 2 and "exclude each other" in r.stderr
