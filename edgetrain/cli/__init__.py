"""The `edgetrain` command (also `python -m edgetrain`).

    edgetrain train --model lenet --data mnist --data-dir DIR --precision int8 \\
                    --epochs 2 --out runs/lenet-int8
    edgetrain train --out runs/lenet-int8 --resume --epochs 4     # continue that run
    edgetrain evaluate runs/lenet-int8                             # accuracy + confusion matrix
    edgetrain compare --model lenet --data mnist --data-dir DIR --precisions fp32,int8 \\
                      --epochs 2 --out runs/compare                 # vs PyTorch, side by side
    edgetrain export runs/lenet-int8 --out lenet.onnx              # ONNX (fp32 weights)
    edgetrain profile --model resnet18 --small-input --precision int8 --batch-size 32 \\
                      --out runs/prof                               # CPU vs accelerator per op

One module per subcommand (train.py, evaluate.py, compare.py, export.py, profile.py), each
with its `add_parser`; what they share is in common.py.

`train` writes into --out DIR, each file atomically (temporary file, fsync,
rename), after every epoch (and checkpoint.et every STEPS steps within epochs
too with --checkpoint-every STEPS):
    checkpoint.et   model + optimizer state, RNG state, epoch (and the position
                    within the next one), metrics, options
                    (edgetrain.checkpoint format: SHA-256 checked, no pickle)
    metrics.jsonl   one JSON object per epoch: epoch, train_loss, train_accuracy,
                    test_loss, test_accuracy, images_per_second, seconds, ...
    curves.png      loss and accuracy per epoch (matplotlib, Agg)

Exact resume: every source of randomness is either in the checkpoint (the
global generator, which int8 backward passes draw their stochastic-rounding
seeds from) or derived from (seed, epoch) -- the batch order of epoch k is a
permutation drawn from SeedSequence([seed, k]), whatever ran before -- so a run
killed at any point and continued with --resume ends with the same weights,
bit for bit, as one that was never interrupted.

User errors (missing data, a checkpoint of another model, a corrupted
checkpoint, an --out that cannot be written, ...) print one line on stderr,
`edgetrain: error: ...`, and exit with status 1 (2 for command-line syntax,
from argparse); nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import CheckpointError, EdgetrainError
from . import compare, evaluate, export, profile, train
from .common import UserError, one_line, os_reason

__all__ = ["main", "build_parser"]


def build_parser():
    p = argparse.ArgumentParser(
        prog="edgetrain",
        description="Train, evaluate, compare with PyTorch, profile and export image classifiers "
                    "with edgetrain (heavy products offloaded to an inference backend).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in (train, evaluate, compare, export, profile):
        mod.add_parser(sub)
    return p


def main(argv=None):
    """Entry point of the `edgetrain` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        msg = str(e)
    except CheckpointError as e:
        msg = str(e)
    except BrokenPipeError:
        # stdout closed early (`edgetrain evaluate ... | head`): not an error of ours;
        # point stdout at devnull so the interpreter's final flush stays quiet
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        msg = f"{os_reason(e)}:{where}" if where else os_reason(e)
        if e.errno == errno.ENOSPC:
            msg += " (the file system is full)"
    except EdgetrainError as e:    # e.g. a state_dict or shape mismatch met late
        msg = str(e)
    except KeyboardInterrupt:
        print("\nedgetrain: interrupted (the last checkpoint is kept; continue with "
              "--resume)", file=sys.stderr)
        return 130
    print(f"edgetrain: error: {one_line(msg)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
