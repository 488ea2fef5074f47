"""The `edgetrain` command (edgetrain.cli) and et.save / et.load (edgetrain.checkpoint).

Training runs are small (lenet on 1000-2000 images of the MNIST 10k subset) so
the file stays well under a minute on 2 cores. Exactness: resumed runs must end
with bit-identical weights and optimizer state (tolerance 0), because every
source of randomness is restored from the checkpoint or derived from
(seed, epoch).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edgetrain as et
from edgetrain import checkpoint as ckpt
from edgetrain import cli
from edgetrain.cli import train as train_mod
from edgetrain.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--train-subset", "1000", "--test-subset", "500", "--batch-size", "64", "--no-progress"]


@pytest.fixture(autouse=True)
def _restore_globals():
    """cli.main sets the process-wide backend and reseeds the global generator."""
    backend, rng = et.get_backend(), et.random.get_rng_state()
    yield
    et.set_backend(backend)
    et.random.set_rng_state(rng)


def run_cli(*args):
    """cli.main in this process -> (exit status, stdout, stderr) via capsys-free capture."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:          # argparse usage errors / --help
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def run_sub(*args, timeout=300):
    """`python -m edgetrain ARGS` in a fresh process -> (exit status, stdout, stderr).
    The longer runs go here: in the pytest process torch's OpenMP pool (2 threads,
    conftest) competes with edgetrain's and slows training several-fold."""
    r = subprocess.run([sys.executable, "-m", "edgetrain", *[str(a) for a in args]], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def train_args(data_dir, out, *extra, epochs=2):
    return ["train", "--model", "lenet", "--data", "mnist", "--data-dir", data_dir,
            "--epochs", epochs, "--out", out, *QUICK, *extra]


def assert_one_line_error(rc, err, *needles):
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgetrain: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], err


def assert_same_state(a, b):
    """Two checkpoints' model + optimizer state, exactly."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for name in sa[i]:
            np.testing.assert_array_equal(sa[i][name], sb[i][name], err_msg=f"{i}.{name}")
    assert a["rng"] == b["rng"]
    for ma, mb in zip(a["metrics"], b["metrics"]):
        for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert ma[k] == mb[k], k


def no_temporaries(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")] == []


@pytest.fixture(scope="module")
def run_dir(mnist10k_dir, tmp_path_factory):
    """One 2-epoch int8 run (progress bar on), shared by the tests that read a run."""
    out = tmp_path_factory.mktemp("run") / "lenet-int8"
    args = [a for a in train_args(mnist10k_dir, out, "--precision", "int8") if a != "--no-progress"]
    rc, stdout, stderr = run_sub(*args)
    assert rc == 0, stderr
    return out, stdout, stderr


# -- et.save / et.load -----------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    m = et.models.lenet()
    opt = et.optim.Adam(m.parameters())
    m(et.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    obj = {
        "model": m.state_dict(), "opt": opt.state_dict(), "rng": et.random.get_rng_state(),
        "ints": [0, -1, 2 ** 130], "floats": (1.5, float("nan"), float("-inf")),
        "none": None, "flag": True, "text": "ü", "raw": b"\x00\xff", 7: "int key",
        ("a", 1): "tuple key", "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "bool": np.array([True, False]), "be": np.arange(4, dtype=">i4"),
        "strided": np.arange(12.0).reshape(3, 4)[:, ::2], "zero_d": np.array(3.5),
        "empty": np.zeros((0, 5), np.int64), "scalar": np.float32(2.25),
        "tensor": et.tensor([1.0, 2.0]),
    }
    path = tmp_path / "x.et"
    et.save(obj, path)
    r = et.load(path)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
    for k, v in obj["model"].items():
        assert r["model"][k].dtype == v.dtype and r["model"][k].flags.writeable
        np.testing.assert_array_equal(r["model"][k], v)
    assert r["rng"] == obj["rng"] and r["ints"] == obj["ints"]
    assert r["floats"][0] == 1.5 and np.isnan(r["floats"][1]) and r["floats"][2] == -np.inf
    assert isinstance(r["floats"], tuple) and r[7] == "int key" and r[("a", 1)] == "tuple key"
    assert (r["none"], r["flag"], r["text"], r["raw"]) == (None, True, "ü", b"\x00\xff")
    for k in ("f16", "bool", "be", "strided", "zero_d", "empty"):
        assert r[k].shape == obj[k].shape and r[k].dtype == obj[k].dtype.newbyteorder("=")
        np.testing.assert_array_equal(r[k], obj[k])
    assert type(r["scalar"]) is np.float32 and r["scalar"] == 2.25
    np.testing.assert_array_equal(r["tensor"], [1.0, 2.0])
    assert r["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    # what was saved loads back into the objects
    m2, opt2 = et.models.lenet(), et.optim.Adam(et.models.lenet().parameters())
    m2.load_state_dict(r["model"])
    opt2.load_state_dict(r["opt"])


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_checkpoint_error_hierarchy():
    assert issubclass(et.CheckpointError, et.EdgetrainError)
    assert issubclass(et.CheckpointError, ValueError)


def test_every_truncation_and_every_byte_flip_is_detected(tmp_path):
    path = tmp_path / "small.et"
    et.save({"w": np.arange(5, dtype=np.float32), "epoch": 3, "name": "lenet"}, path)
    good = path.read_bytes()
    assert et.load(path)["epoch"] == 3
    bad = tmp_path / "bad.et"
    for n in range(len(good)):                       # every truncation
        bad.write_bytes(good[:n])
        with pytest.raises(et.CheckpointError, match="bad.et"):
            et.load(bad)
    for i in range(len(good)):                       # every single-byte corruption
        for flip in (0x01, 0x80):
            b = bytearray(good)
            b[i] ^= flip
            bad.write_bytes(bytes(b))
            with pytest.raises(et.CheckpointError):
                et.load(bad)
    bad.write_bytes(good + b"\0")
    with pytest.raises(et.CheckpointError, match="unexpected bytes"):
        et.load(bad)


def test_load_messages_name_file_and_problem(tmp_path):
    good = tmp_path / "good.et"
    et.save({"a": np.ones(3)}, good)
    g = good.read_bytes()
    cases = {
        "not an edgetrain checkpoint": b"PK\x03\x04" + g[4:],
        "unsupported checkpoint format version 2": g[:8] + b"\x02" + g[9:],
        "truncated": g[:-7],
        "checksum mismatch": g[:-1] + bytes([g[-1] ^ 0xFF]),
        "empty": b"",
    }
    for needle, data in cases.items():
        p = tmp_path / "case.et"
        p.write_bytes(data)
        with pytest.raises(et.CheckpointError, match=needle) as ei:
            et.load(p)
        assert "case.et" in str(ei.value)


def _forge(tree, arrays_meta=(), data=b""):
    """A file with a valid header and checksum around an arbitrary manifest."""
    import hashlib
    manifest = json.dumps({"tree": tree, "arrays": list(arrays_meta)}).encode()
    header = ckpt._HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0, len(manifest), len(data))
    body = header + manifest + data
    return body + hashlib.sha256(body).digest()


def test_valid_checksum_but_hostile_manifest_is_rejected(tmp_path):
    p = tmp_path / "forged.et"
    hostile = [
        _forge({"__reduce__": ["os.system", ["echo hi"]]}),                 # no such node
        _forge({"array": 0}),                                               # no arrays
        _forge({"array": 0}, [{"dtype": "<f4", "shape": [100], "offset": 0, "nbytes": 400}],
               b"\0" * 16),                                                 # past the data
        _forge({"array": 0}, [{"dtype": "|O", "shape": [1], "offset": 0, "nbytes": 8}],
               b"\0" * 8),                                                  # object dtype
        _forge({"dict": [[[1], 2]]}),                                       # unhashable key
    ]
    for data in hostile:
        p.write_bytes(data)
        with pytest.raises(et.CheckpointError, match="malformed manifest"):
            et.load(p)
    p.write_bytes(_forge({"dict": [["x", {"tuple": [1, {"float": "nan"}]}]]}))
    assert et.load(p)["x"][0] == 1


def test_save_is_atomic_and_rejects_unstorable(tmp_path, monkeypatch):
    path = tmp_path / "c.et"
    et.save({"v": 1}, path)
    with pytest.raises(TypeError, match=r"set at obj\['v'\]"):
        et.save({"v": {1, 2}}, path)
    with pytest.raises(TypeError, match="object"):
        et.save({"v": np.array([object()])}, path)

    def disk_full(f, head, chunks):
        f.write(head[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_all", disk_full)
    with pytest.raises(OSError, match="No space"):
        et.save({"v": 2}, path)
    monkeypatch.undo()
    assert et.load(path) == {"v": 1}                  # the old file, whole
    assert no_temporaries(tmp_path)


# -- help ---------------------------------------------------------------------------
def test_help_of_every_subcommand():
    for sub in ([], ["train"], ["evaluate"]):
        r = subprocess.run([sys.executable, "-m", "edgetrain", *sub, "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("usage: edgetrain")
    rc, out, _ = run_cli("train", "--help")
    assert rc == 0
    for opt in ("--model", "--data", "--data-dir", "--precision", "--backend", "--epochs",
                "--batch-size", "--lr", "--optimizer", "--seed", "--init", "--train-only",
                "--out", "--resume", "--train-subset", "--test-subset"):
        assert opt in out, opt
    rc, out, _ = run_cli("evaluate", "--help")
    assert rc == 0 and "CHECKPOINT" in out and "confusion" in out


def test_console_script_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert 'edgetrain = "edgetrain.cli:main"' in text
    assert callable(cli.main)


# -- train ----------------------------------------------------------------------------
def test_train_writes_metrics_checkpoint_curves(run_dir):
    out, stdout, stderr = run_dir
    assert "img_s=" in stderr                       # the tqdm bar: loss, acc, images/s
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(s) for s in lines]
    for i, m in enumerate(rows, 1):
        for k in ("epoch", "train_loss", "test_loss", "test_accuracy", "images_per_second",
                  "seconds"):
            assert k in m, k
        assert m["epoch"] == i and m["images_per_second"] > 0 and m["seconds"] > 0
    assert rows[1]["test_accuracy"] > 0.6           # 1000 images, 2 epochs: learns something
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    ck = et.load(out / "checkpoint.et")
    assert ck["epoch"] == 2 and ck["model_name"] == "lenet"
    assert ck["config"]["precision"] == "int8" and ck["metrics"] == rows
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert no_temporaries(out)
    assert f"test loss {rows[1]['test_loss']:.4f} acc {rows[1]['test_accuracy']:.4f}" in stdout


def test_resume_one_then_two_epochs_equals_two(mnist10k_dir, tmp_path):
    common = ("--lr-schedule", "constant", "--precision", "int8")
    rc, _, err = run_sub(*train_args(mnist10k_dir, tmp_path / "straight", *common, epochs=2))
    assert rc == 0, err
    rc, _, err = run_sub(*train_args(mnist10k_dir, tmp_path / "split", *common, epochs=1))
    assert rc == 0, err
    assert et.load(tmp_path / "split" / "checkpoint.et")["epoch"] == 1
    rc, out, err = run_sub("train", "--out", tmp_path / "split", "--resume", "--epochs", 2,
                           "--data-dir", mnist10k_dir, "--no-progress")
    assert rc == 0, err
    assert "resuming" in out
    a = et.load(tmp_path / "straight" / "checkpoint.et")
    b = et.load(tmp_path / "split" / "checkpoint.et")
    assert a["epoch"] == b["epoch"] == 2
    assert_same_state(a, b)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    # nothing left to do: exits 0 and changes nothing
    before = (tmp_path / "split" / "checkpoint.et").read_bytes()
    rc, out, _ = run_sub("train", "--out", tmp_path / "split", "--resume", "--no-progress")
    assert rc == 0 and "nothing to do" in out
    assert (tmp_path / "split" / "checkpoint.et").read_bytes() == before


def test_killed_run_resumes_to_the_same_weights(mnist10k_dir, tmp_path):
    # default lr schedule (linear decay): the resumed run must follow it exactly too
    args = ["train", "--model", "lenet", "--data", "mnist", "--data-dir", str(mnist10k_dir),
            "--precision", "int8", "--epochs", "3", "--train-subset", "2000",
            "--test-subset", "200", "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "edgetrain", *args, "--out", str(killed)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck_path = killed / "checkpoint.et"
    deadline = time.monotonic() + 120
    try:
        while not ck_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the run ended or stalled before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)               # mid-way through epoch 2
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = et.load(ck_path)["epoch"]
    assert 1 <= done < 3, "the run finished before the kill: the test proves nothing"

    rc, _, err = run_sub(*args[:1], "--out", killed, "--resume", "--data-dir", mnist10k_dir,
                         "--no-progress")
    assert rc == 0, err
    assert no_temporaries(killed)
    rc, _, err = run_sub(*args, "--out", tmp_path / "straight")
    assert rc == 0, err
    a = et.load(tmp_path / "straight" / "checkpoint.et")
    b = et.load(ck_path)
    assert a["epoch"] == b["epoch"] == 3
    assert_same_state(a, b)
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 3


def _interrupt_after_checkpoints(monkeypatch, n):
    """The run stops (KeyboardInterrupt, as Ctrl-C) right after its n-th checkpoint
    write, at a known step: the deterministic twin of the random kills in
    stress/kill_resume.py."""
    real, count = train_mod.write_out, {"n": 0}

    def write_out(path, what, write):
        real(path, what, write)
        if what == "checkpoint":
            count["n"] += 1
            if count["n"] == n:
                raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "write_out", write_out)


def test_checkpoint_every_resumes_mid_epoch_exactly(mnist10k_dir, tmp_path, monkeypatch):
    """--checkpoint-every 2 on 5 steps per epoch: checkpoints after steps 2, 4 (within
    epoch 1), 5 (its end), 6, 8 (within epoch 2), 10. Stopped after step 2 and again
    after step 6, each resumed from the middle of an epoch: the final weights,
    optimizer state, RNG state and metrics equal an uninterrupted run's without
    --checkpoint-every (linear lr schedule: the resumed steps must get the same lr)."""
    base = ["train", "--model", "lenet", "--data", "mnist", "--data-dir", mnist10k_dir,
            "--precision", "int8", "--epochs", 2, "--train-subset", 320, "--test-subset", 100,
            "--batch-size", 64, "--no-progress"]
    rc, _, err = run_cli(*base, "--out", tmp_path / "straight")
    assert rc == 0, err
    straight = et.load(tmp_path / "straight" / "checkpoint.et")
    assert straight["in_epoch"] is None and straight["step"] == 10

    run = tmp_path / "stopped"
    _interrupt_after_checkpoints(monkeypatch, 1)
    rc, _, err = run_cli(*base, "--out", run, "--checkpoint-every", 2)
    assert rc == 130, err
    ck = et.load(run / "checkpoint.et")
    assert (ck["epoch"], ck["step"], ck["in_epoch"]["batches"]) == (0, 2, 2)
    assert ck["metrics"] == [] and not (run / "metrics.jsonl").exists()
    assert ck["in_epoch"]["seen"] == 128 and ck["config"]["checkpoint_every"] == 2

    # --checkpoint-every comes from the checkpoint; the 3rd write of this run: step 6
    _interrupt_after_checkpoints(monkeypatch, 3)
    rc, out, err = run_cli("train", "--out", run, "--resume", "--no-progress")
    assert rc == 130, err
    assert "resuming" in out and "in epoch 1 after step 2/5" in out
    ck = et.load(run / "checkpoint.et")
    assert (ck["epoch"], ck["step"], ck["in_epoch"]["batches"]) == (1, 6, 1)
    assert len(ck["metrics"]) == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()

    rc, out, err = run_cli("train", "--out", run, "--resume", "--no-progress")
    assert rc == 0, err
    assert "in epoch 2 after step 1/5" in out
    assert no_temporaries(run)
    end = et.load(run / "checkpoint.et")
    assert end["epoch"] == 2 and end["in_epoch"] is None
    assert_same_state(straight, end)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_checkpoint_without_mid_epoch_keys(mnist10k_dir, tmp_path):
    """A checkpoint of an edgetrain before --checkpoint-every (no step / in_epoch keys,
    no checkpoint_every option) still resumes exactly, from its epoch's end."""
    base = ["train", "--model", "lenet", "--data", "mnist", "--data-dir", mnist10k_dir,
            "--train-subset", 192, "--test-subset", 64, "--lr-schedule", "constant",
            "--no-progress"]
    rc, _, err = run_cli(*base, "--epochs", 2, "--out", tmp_path / "straight")
    assert rc == 0, err
    rc, _, err = run_cli(*base, "--epochs", 1, "--out", tmp_path / "old")
    assert rc == 0, err
    path = tmp_path / "old" / "checkpoint.et"
    ck = et.load(path)
    for k in ("step", "in_epoch"):
        del ck[k]
    del ck["config"]["checkpoint_every"]
    et.save(ck, path)
    rc, out, err = run_cli("train", "--out", tmp_path / "old", "--resume", "--epochs", 2,
                           "--no-progress")
    assert rc == 0, err
    assert "resuming" in out and "after epoch 1" in out
    assert_same_state(et.load(tmp_path / "straight" / "checkpoint.et"), et.load(path))


def test_resume_of_a_finished_run_restores_metrics_and_curves(mnist10k_dir, tmp_path):
    """Killed after the last checkpoint but before metrics.jsonl / curves.png were
    rewritten: --resume has no step left to run, and brings both up to date; a run
    whose files are whole is left untouched."""
    out = tmp_path / "run"
    rc, _, err = run_cli("train", "--model", "lenet", "--data", "mnist", "--data-dir",
                         mnist10k_dir, "--epochs", 2, "--train-subset", 128, "--test-subset",
                         64, "--no-progress", "--out", out)
    assert rc == 0, err
    files = {n: (out / n).read_bytes() for n in ("checkpoint.et", "metrics.jsonl", "curves.png")}
    rc, stdout, _ = run_cli("train", "--out", out, "--resume", "--no-progress")
    assert rc == 0 and "nothing to do" in stdout and "restored" not in stdout
    assert {n: (out / n).read_bytes() for n in files} == files
    # metrics.jsonl one epoch behind, curves.png gone
    (out / "metrics.jsonl").write_bytes(files["metrics.jsonl"].splitlines(True)[0])
    (out / "curves.png").unlink()
    rc, stdout, _ = run_cli("train", "--out", out, "--resume", "--no-progress")
    assert rc == 0 and "restored" in stdout and "nothing to do" in stdout
    assert (out / "metrics.jsonl").read_bytes() == files["metrics.jsonl"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.et").read_bytes() == files["checkpoint.et"]
    # killed between metrics.jsonl and curves.png: curves.png older than metrics.jsonl
    os.utime(out / "curves.png", ns=(1, 1))
    rc, stdout, _ = run_cli("train", "--out", out, "--resume", "--no-progress")
    assert rc == 0 and "restored" in stdout
    assert (out / "curves.png").stat().st_mtime_ns >= (out / "metrics.jsonl").stat().st_mtime_ns


def test_checkpoint_every_rejects_a_negative_count(tmp_path):
    rc, _, err = run_cli("train", "--out", tmp_path / "r", "--checkpoint-every", -1)
    assert rc == 2 and "--checkpoint-every" in err and "-1" in err


def _record_weight_gradients(monkeypatch):
    """Records (weight shape, weight gradient requested) of every conv/linear backward."""
    calls = []
    real = F._C

    class Proxy:
        def __getattr__(self, name):
            fn = getattr(real, name)
            where = {"conv2d_backward": 8, "conv2d_backward_lowp": 8,
                     "linear_backward": 4, "linear_backward_lowp": 4}.get(name)
            if where is None:
                return fn

            def wrapped(*a, **k):
                calls.append((name, tuple(a[2].shape), bool(a[where])))
                return fn(*a, **k)
            return wrapped

    monkeypatch.setattr(F, "_C", Proxy())
    return calls


def test_train_only_freezes_and_computes_no_frozen_weight_gradient(
        mnist10k_dir, tmp_path, monkeypatch, run_dir):
    calls = _record_weight_gradients(monkeypatch)
    init = run_dir[0] / "checkpoint.et"                    # --init from an edgetrain run
    rc, out, err = run_cli("train", "--model", "lenet", "--data", "mnist", "--data-dir",
                           mnist10k_dir, "--epochs", 1, "--train-subset", 256, "--test-subset",
                           100, "--train-only", "fc3", "--init", init, "--out", tmp_path / "ft",
                           "--no-progress")
    monkeypatch.undo()
    assert rc == 0, err
    assert "frozen" in out
    assert calls, "no backward pass recorded"
    weight_grads = {shape for name, shape, nw in calls if nw}
    assert weight_grads == {(10, 84)}, calls                # fc3 only
    assert not any(name.startswith("conv") for name, _, _ in calls)   # nothing below fc3 needs dx
    start, end = et.load(init)["model"], et.load(tmp_path / "ft" / "checkpoint.et")["model"]
    for k in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.bias"):
        np.testing.assert_array_equal(end[k], start[k], err_msg=k)
    assert not np.array_equal(end["fc3.weight"], start["fc3.weight"])


def test_init_from_torch_state_dict(mnist10k_dir, tmp_path):
    torch = pytest.importorskip("torch")
    et.manual_seed(123)
    state = et.models.lenet().state_dict()
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, tmp_path / "w.pt")
    rc, _, err = run_cli("train", "--model", "lenet", "--data", "mnist", "--data-dir",
                         mnist10k_dir, "--epochs", 1, "--train-subset", 128, "--test-subset", 64,
                         "--train-only", "fc3", "--init", tmp_path / "w.pt", "--out",
                         tmp_path / "run", "--no-progress")
    assert rc == 0, err
    end = et.load(tmp_path / "run" / "checkpoint.et")["model"]
    np.testing.assert_array_equal(end["conv1.weight"], state["conv1.weight"])


def test_init_torch_file_without_torch(mnist10k_dir, tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setitem(sys.modules, "torch", None)        # import torch -> ImportError
    rc, _, err = run_cli(*train_args(mnist10k_dir, tmp_path / "o", "--init", tmp_path / "w.pt"))
    assert_one_line_error(rc, err, "torch, which is not installed")


# -- evaluate -----------------------------------------------------------------------
def test_evaluate_prints_accuracy_and_confusion_matrix(run_dir):
    out, _, _ = run_dir
    rc, stdout, err = run_cli("evaluate", out, "--subset", 500)
    assert rc == 0, err
    lines = stdout.splitlines()
    acc_line = next(s for s in lines if s.startswith("accuracy "))
    acc = float(acc_line.split()[1])
    i = next(k for k, s in enumerate(lines) if s.startswith("confusion matrix"))
    rows = [s.split() for s in lines[i + 2:i + 12]]
    conf = np.array([[int(v) for v in r[1:11]] for r in rows])
    assert conf.shape == (10, 10) and conf.sum() == 500
    assert acc == pytest.approx(np.trace(conf) / 500, abs=5e-5)
    # the same 500 test images at the run's precision: the run's own last test accuracy
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert acc == pytest.approx(last["test_accuracy"], abs=5e-5)


# -- user errors: one line on stderr, exit status != 0, no traceback, nothing written --
def test_missing_data_directory(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgetrain", "train", "--data", "mnist",
                        "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_one_line_error(r.returncode, r.stderr, "nowhere", "does not exist")
    assert not (tmp_path / "o").exists()
    rc, _, err = run_cli("train", "--data", "mnist", "--out", tmp_path / "o")
    assert_one_line_error(rc, err, "--data-dir")


def test_bad_model_name_is_a_usage_error(tmp_path):
    rc, _, err = run_cli("train", "--model", "resnet99", "--out", tmp_path / "o")
    assert rc == 2 and "invalid choice: 'resnet99'" in err and "Traceback" not in err


def test_checkpoint_of_another_model(run_dir, mnist10k_dir, tmp_path):
    ck = run_dir[0] / "checkpoint.et"
    rc, _, err = run_cli("train", "--model", "resnet18", "--data", "mnist", "--data-dir",
                         mnist10k_dir, "--init", ck, "--out", tmp_path / "o", *QUICK)
    assert_one_line_error(rc, err, "lenet model, not resnet18")
    assert not (tmp_path / "o").exists()
    rc, _, err = run_cli("evaluate", ck, "--model", "resnet18")
    assert_one_line_error(rc, err, "lenet model, not resnet18")
    rc, _, err = run_cli("train", "--out", run_dir[0], "--resume", "--model", "resnet18")
    assert_one_line_error(rc, err, "--model resnet18 differs")
    # a bare state_dict of another architecture
    et.save(et.models.lenet().state_dict(), tmp_path / "sd.et")
    rc, _, err = run_cli("evaluate", tmp_path / "sd.et", "--model", "resnet18",
                         "--data", "mnist", "--data-dir", mnist10k_dir, "--subset", 10)
    assert_one_line_error(rc, err, "does not fit the model")


def test_corrupted_and_truncated_checkpoints(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir[0], run)
    path = run / "checkpoint.et"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    rc, _, err = run_cli("train", "--out", run, "--resume", "--epochs", 3, "--no-progress")
    assert_one_line_error(rc, err, "checksum mismatch", "checkpoint.et")
    assert path.read_bytes() == bytes(data)               # untouched
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    rc, _, err = run_cli("evaluate", run)
    assert_one_line_error(rc, err, "checksum mismatch")
    path.write_bytes(bytes(data[:1000]))
    rc, _, err = run_cli("evaluate", path)
    assert_one_line_error(rc, err, "truncated")


def test_out_under_a_regular_file(mnist10k_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(*train_args(mnist10k_dir, tmp_path / "file" / "run"))
    assert_one_line_error(rc, err, "cannot create the directory")
    rc, _, err = run_cli(*train_args(mnist10k_dir, tmp_path / "file"))
    assert_one_line_error(rc, err, "not a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod does not stop root from writing "
                           "(out-of-space and a path under a file are tested instead)")
def test_read_only_out(mnist10k_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, _, err = run_cli(*train_args(mnist10k_dir, ro))
        assert_one_line_error(rc, err, "not writable")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_out_of_space_keeps_the_last_whole_checkpoint(mnist10k_dir, tmp_path, monkeypatch):
    """The disk fills up while the epoch-2 checkpoint is written: one line, exit 1,
    no temporary file, and the epoch-1 checkpoint still whole (and resumable)."""
    real, n = ckpt._write_all, {"calls": 0}

    def fill_up_on_second(f, head, chunks):
        n["calls"] += 1
        if n["calls"] == 2:
            f.write(head[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, head, chunks)

    monkeypatch.setattr(ckpt, "_write_all", fill_up_on_second)
    out = tmp_path / "full"
    rc, _, err = run_cli(*train_args(mnist10k_dir, out, "--train-subset", 256))
    monkeypatch.undo()
    assert_one_line_error(rc, err, "No space left on device", "checkpoint.et")
    assert no_temporaries(out)
    assert et.load(out / "checkpoint.et")["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_other_user_errors(run_dir, mnist10k_dir, tmp_path):
    run = run_dir[0]
    rc, _, err = run_cli(*train_args(mnist10k_dir, run))
    assert_one_line_error(rc, err, "already holds a training run", "--resume")
    rc, _, err = run_cli("train", "--out", tmp_path / "none", "--resume")
    assert_one_line_error(rc, err, "no checkpoint.et")
    rc, _, err = run_cli("train", "--out", run, "--resume", "--lr", "0.3")
    assert_one_line_error(rc, err, "--lr 0.3 differs")
    rc, _, err = run_cli(*train_args(mnist10k_dir, tmp_path / "o", "--train-only", "layer4"))
    assert_one_line_error(rc, err, "no parameter name starts with 'layer4'")
    rc, _, err = run_cli(*train_args(mnist10k_dir, tmp_path / "o", "--backend", "tpu"))
    assert_one_line_error(rc, err, "--backend tpu")
    rc, _, err = run_cli("evaluate", tmp_path / "missing.et")
    assert_one_line_error(rc, err, "no checkpoint")
    rc, _, err = run_cli("train", "--epochs", "0", "--out", tmp_path / "o")
    assert rc == 2 and "positive integer" in err


# -- compare ----------------------------------------------------------------------
def _compare_runs(out):
    doc = json.loads((Path(out) / "compare.json").read_text())
    return doc, {r["precision"]: r for r in doc["runs"]}


def test_compare_matches_train_and_pytorch(mnist10k_dir, run_dir, tmp_path):
    """compare's edgetrain int8 run is `edgetrain train`'s run with the same options
    (same init, batch order and stochastic-rounding seeds): the same test loss and
    accuracy, exactly. Its PyTorch fp32 run starts from the same weights and sees
    the same batches, so edgetrain fp32 follows it (per-epoch train loss within
    2e-3 relative: the fp32 training-parity tolerance is 1e-3 per step on 20
    steps, here 32 steps; test accuracy within 1 pp)."""
    train_dir, _, _ = run_dir
    out = tmp_path / "cmp"
    rc, stdout, stderr = run_sub("compare", "--model", "lenet", "--data", "mnist", "--data-dir",
                                 mnist10k_dir, "--epochs", 2, "--precisions", "fp32,int8",
                                 "--threads", 2, "--out", out, *QUICK)
    assert rc == 0, stderr
    for name in ("pytorch fp32", "edgetrain fp32", "edgetrain int8", "ms/step", "peak RSS"):
        assert name in stdout
    doc, runs = _compare_runs(out)
    assert list(runs) == ["torch-fp32", "fp32", "int8"]
    assert doc["recipe"]["n_train"] == 1000 and doc["recipe"]["n_test"] == 500
    assert doc["machine"]["threads"] == 2
    train_metrics = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    for m, e in zip(train_metrics, runs["int8"]["epochs"]):
        assert e["test_acc"] == m["test_accuracy"]
        assert e["test_loss"] == pytest.approx(m["test_loss"], rel=1e-12, abs=0)
    t, f = runs["torch-fp32"], runs["fp32"]
    for et_ep, t_ep in zip(f["epochs"], t["epochs"]):
        assert abs(et_ep["train_loss"] - t_ep["train_loss"]) <= 2e-3 * t_ep["train_loss"]
    assert abs(f["test_acc"] - t["test_acc"]) <= 0.01
    for r in runs.values():
        assert r["before"] is None                       # no --init: nothing to report
        assert len(r["step_losses"]) == 2 * 16 and r["ms_step_median"] > 0
        assert r["peak_rss_bytes"] > r["peak_saved_activation_bytes"] > 0
        assert 0.0 <= r["other_cpu_share"] <= 1.0               # measured (Linux)
        assert r["code"] and len(r["code"]) == 1                 # one process, not resumed
    # int8 keeps a quarter of fp32's saved activations (plus per-tensor scales)
    assert runs["int8"]["peak_saved_activation_bytes"] < 0.3 * f["peak_saved_activation_bytes"]
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert "| edgetrain int8 |" in md and "AMD" in md or "Intel" in md or "cpu" in md
    assert no_temporaries(out)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the CPU-share counters read Linux's /proc")
def test_other_cpu_share_sees_other_processes_not_this_one():
    """The contention figure beside every step time (compare, accuracy table): CPU
    time of OTHER processes counts. A child spinning for 1 s on one core is 1/N
    of an N-core machine's ticks over that interval (asserted >= 0.6/N, slack for
    the child's start-up and tick granularity). This process's own spinning lands
    in its own ticks, which other_cpu subtracts from the machine's busy ticks."""
    from edgetrain.cli.runs import cpu_counters, other_cpu
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
    c0 = cpu_counters()
    subprocess.run([sys.executable, "-c", spin], check=True)
    o, t = other_cpu(c0, cpu_counters())
    assert t > 0 and o / t >= 0.6 / (os.cpu_count() or 1), (o, t)
    # this process spinning: in its own ticks, not in the others'
    c0 = cpu_counters()
    t_end = time.time() + 0.5
    while time.time() < t_end:
        pass
    c1 = cpu_counters()
    assert c1[2] - c0[2] >= 0.3 * os.sysconf("SC_CLK_TCK"), (c0, c1)
    assert other_cpu(None, c1) == (0, 0)                  # off Linux: nothing measured


def test_compare_init_from_torch_and_train_only(mnist10k_dir, tmp_path):
    """--init from a torch.save'd state_dict and --train-only fc3 in both frameworks:
    both report the accuracy of the imported weights before training (the same
    weights: equal up to an fp32 tie), and only fc3 moves (the frozen layers' saved
    activations are not needed for a weight gradient, so fc3's input alone is held)."""
    torch = pytest.importorskip("torch")
    from edgetrain.models.torch_reference import TorchLeNet

    torch.manual_seed(3)
    pt = tmp_path / "lenet.pt"
    torch.save(TorchLeNet().state_dict(), pt)
    out = tmp_path / "cmp"
    rc, stdout, stderr = run_sub("compare", "--model", "lenet", "--data", "mnist", "--data-dir",
                                 mnist10k_dir, "--epochs", 1, "--precisions", "fp32",
                                 "--init", pt, "--train-only", "fc3", "--threads", 2,
                                 "--train-subset", 512, "--test-subset", 256, "--no-progress",
                                 "--out", out)
    assert rc == 0, stderr
    assert "acc before" in stdout
    _, runs = _compare_runs(out)
    t, f = runs["torch-fp32"], runs["fp32"]
    assert abs(t["before"]["test_acc"] - f["before"]["test_acc"]) <= 1 / 256
    assert t["before"]["test_loss"] == pytest.approx(f["before"]["test_loss"], rel=1e-4)
    assert f["test_loss"] < f["before"]["test_loss"]   # fc3 learns (8 steps on random features)
    assert t["test_loss"] == pytest.approx(f["test_loss"], rel=1e-3)
    assert f["peak_saved_activation_bytes"] == 64 * 84 * 4   # fc3's fp32 input, batch 64
    assert abs(f["epochs"][0]["train_loss"] - t["epochs"][0]["train_loss"]) <= 2e-3 * t["epochs"][0]["train_loss"]


def test_compare_user_errors(mnist10k_dir, tmp_path):
    rc, _, err = run_cli("compare", "--data", "mnist", "--data-dir", mnist10k_dir,
                         "--precisions", "fp32,int4", "--out", tmp_path / "a")
    assert_one_line_error(rc, err, "--precisions", "int4")
    rc, _, err = run_cli("compare", "--data", "mnist", "--data-dir", tmp_path / "nowhere",
                         "--out", tmp_path / "b")
    assert_one_line_error(rc, err, "nowhere")
    rc, _, err = run_cli("compare", "--data", "mnist", "--data-dir", mnist10k_dir,
                         "--train-only", "conv9", "--out", tmp_path / "c")
    assert_one_line_error(rc, err, "conv9")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- export -------------------------------------------------------------------------
def _onnx_logits(path, x):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_export_run_round_trips_through_onnxruntime(mnist10k_dir, run_dir, tmp_path):
    """`edgetrain export` of the int8 run: onnxruntime's logits on 200 normalised test
    digits equal edgetrain's fp32 forward of the checkpoint within 1e-4 (the issue's
    tolerance), computed here independently of the command's own check."""
    pytest.importorskip("onnx")
    train_dir, _, _ = run_dir
    out = tmp_path / "lenet.onnx"
    rc, stdout, stderr = run_cli("export", train_dir, "--out", out)
    assert rc == 0, stderr
    assert "max |logit difference|" in stdout
    ck = et.load(train_dir / "checkpoint.et")
    model = et.models.lenet()
    model.load_state_dict(ck["model"])
    model.eval()
    images, _ = et.data.load_mnist(mnist10k_dir, train=False)
    mean, std = ck["normalization"]
    x = ((images[:200].astype(np.float32) / 255 - np.float32(mean)) / np.float32(std))[:, None]
    x = np.ascontiguousarray(x)
    with et.no_grad():
        want = np.asarray(model(et.from_numpy(x)).numpy())
    got = _onnx_logits(out, x)
    assert got.shape == (200, 10)
    assert np.max(np.abs(got - want)) <= 1e-4
    import onnx
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["edgetrain.model"] == "lenet"
    assert props["edgetrain.normalization"] == f"{mean},{std}"


def test_export_bare_state_dict_resnet18(tmp_path):
    """A bare et.save'd resnet18 state_dict with --model (BatchNorm running statistics
    moved away from 0/1 by train-mode forwards, so the eval-mode BN is exercised)."""
    pytest.importorskip("onnx")
    et.manual_seed(5)
    model = et.models.resnet18(num_classes=10, in_channels=1, small_input=True)
    with et.no_grad():
        for _ in range(2):
            model(et.from_numpy(np.random.default_rng(1).standard_normal((4, 1, 28, 28), dtype=np.float32)))
    et.save(model.state_dict(), tmp_path / "r18.et")
    out = tmp_path / "r18.onnx"
    rc, stdout, stderr = run_cli("export", tmp_path / "r18.et", "--model", "resnet18", "--out", out)
    assert rc == 0, stderr
    model.eval()
    x = np.random.default_rng(2).standard_normal((3, 1, 28, 28), dtype=np.float32)
    with et.no_grad():
        want = np.asarray(model(et.from_numpy(x)).numpy())
    assert np.max(np.abs(_onnx_logits(out, x) - want)) <= 1e-4


def test_export_user_errors(run_dir, tmp_path):
    train_dir, _, _ = run_dir
    et.save({"conv1.weight": np.zeros((6, 1, 5, 5), np.float32)}, tmp_path / "bare.et")
    rc, _, err = run_cli("export", tmp_path / "bare.et", "--out", tmp_path / "a.onnx")
    assert_one_line_error(rc, err, "--model")
    rc, _, err = run_cli("export", tmp_path / "bare.et", "--model", "lenet", "--out", tmp_path / "a.onnx")
    assert_one_line_error(rc, err, "does not fit")
    rc, _, err = run_cli("export", train_dir, "--model", "resnet18", "--out", tmp_path / "a.onnx")
    assert_one_line_error(rc, err, "lenet")
    rc, _, err = run_cli("export", train_dir, "--out", tmp_path / "missing" / "a.onnx")
    assert_one_line_error(rc, err, "does not exist")
    bad = tmp_path / "bad.et"
    data = bytearray((train_dir / "checkpoint.et").read_bytes())
    data[len(data) // 2] ^= 0x40
    bad.write_bytes(bytes(data))
    rc, _, err = run_cli("export", bad, "--out", tmp_path / "a.onnx")
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a.onnx").exists() and no_temporaries(tmp_path)
