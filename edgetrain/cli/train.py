"""`edgetrain train`: train a model, writing OUT/checkpoint.et, OUT/metrics.jsonl
and OUT/curves.png after every epoch (and, with --checkpoint-every STEPS, the
checkpoint every STEPS steps within epochs too); `--resume` continues a run
exactly, from an epoch's end or from the middle of one."""
from __future__ import annotations

import itertools
import json
import math
import os
import time

import numpy as np

import edgetrain as et
from .common import (
    CHECKPOINT, CHECKPOINT_KIND, CURVES, DATASETS, DEFAULT_LR, FASHION_DIR, METRICS,
    MODELS, PRECISIONS, UserError, build_model, check_input_size, epoch_seed,
    evaluate_model, freeze, load_weights, lr_at, make_optimizer, nonneg_float,
    nonneg_int, normalization, normalize, one_line, positive_float, positive_int,
    prepare_out, read_split, read_weights, remove_stale_temporaries, tqdm_or_none,
    write_curves, write_metrics, write_out,
)

# Training options, their defaults (None: depends on another option) and whether
# --resume may change them. The checkpoint stores the values a run used;
# --resume takes them from there and refuses a different value given on the
# command line, except for these: more --epochs, a moved --data-dir, another
# --backend (the backends' fp32 results differ in rounding, so exactness holds
# only for the same backend).
TRAIN_DEFAULTS = {
    "model": "lenet", "data": "fashion-mnist", "data_dir": None, "precision": "fp32",
    "backend": None, "epochs": 10, "batch_size": 64, "lr": None, "optimizer": "sgd",
    "momentum": 0.9, "weight_decay": 0.0, "lr_schedule": "linear", "seed": 0,
    "init": None, "train_only": None, "train_subset": None, "test_subset": None,
    "checkpoint_every": 0,
}
# checkpoint_every: how often the checkpoint is written changes nothing in the
# results, so --resume may change it too (0: at epoch ends only).
RESUME_MAY_CHANGE = ("epochs", "data_dir", "backend", "checkpoint_every")


# -- train --------------------------------------------------------------------------
def _resolve_train_config(args):
    """The run's options: the command line's, or on --resume the checkpoint's
    (a conflicting value on the command line is an error). Returns (config, checkpoint)."""
    given = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    ck_path = os.path.join(args.out, CHECKPOINT)
    ck = None
    if args.resume:
        if not os.path.exists(ck_path):
            raise UserError(f"--resume: no {CHECKPOINT} in {args.out} to continue from")
        ck = et.load(ck_path)                      # CheckpointError -> one line
        if not (isinstance(ck, dict) and ck.get("kind") == CHECKPOINT_KIND):
            raise UserError(f"--resume: {ck_path} is not a training checkpoint of "
                            "`edgetrain train`")
        # checkpoints of older edgetrain versions lack the newer options: their defaults
        config = {**{k: TRAIN_DEFAULTS[k] for k in ("checkpoint_every",)}, **ck["config"]}
        for k, v in given.items():
            if v is None or k in RESUME_MAY_CHANGE:
                continue
            if v != config.get(k):
                raise UserError(f"--resume: --{k.replace('_', '-')} {v} differs from the "
                                f"run in {args.out} ({config.get(k)}); drop it, or start a "
                                "new run with another --out")
        for k in RESUME_MAY_CHANGE:
            if given[k] is not None:
                config[k] = given[k]
        if config["epochs"] != ck["config"]["epochs"] and config["lr_schedule"] == "linear":
            print(f"note: --epochs {config['epochs']} (the run was for "
                  f"{ck['config']['epochs']}): the linear lr schedule now decays over "
                  f"{config['epochs']} epochs")
    else:
        if os.path.exists(ck_path):
            raise UserError(f"{args.out} already holds a training run ({ck_path}); pass "
                            "--resume to continue it, or choose another --out")
        config = {k: (TRAIN_DEFAULTS[k] if v is None else v) for k, v in given.items()}
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    if config["backend"] is None:
        config["backend"] = et.get_backend()
    if config["backend"] not in et.backends():
        raise UserError(f"--backend {config['backend']}: not available here (available: "
                        f"{', '.join(et.backends())})")
    return config, ck


def _outputs_behind(out, metrics):
    """Whether metrics.jsonl is not the checkpoint's metrics, or curves.png is missing
    or older than metrics.jsonl (both are written after the checkpoint, in that order)."""
    m_path, c_path = os.path.join(out, METRICS), os.path.join(out, CURVES)
    try:
        with open(m_path, "rb") as f:
            rows = [json.loads(line) for line in f.read().splitlines()]
        if rows != metrics:
            return True
        return os.stat(c_path).st_mtime_ns < os.stat(m_path).st_mtime_ns
    except (OSError, ValueError):
        return True


def cmd_train(args):
    config, ck = _resolve_train_config(args)
    out = args.out

    # data first: a typo in --data-dir must not leave an empty run directory behind
    x_img, y = read_split(config["data"], config["data_dir"], train=True)
    xt_img, yt = read_split(config["data"], config["data_dir"], train=False)
    norm = tuple(ck["normalization"]) if ck is not None else normalization(config["data"], x_img)
    check_input_size(config["model"], x_img)
    num_classes = int(max(10, y.max() + 1, yt.max() + 1))
    if ck is not None and ck["num_classes"] != num_classes:
        raise UserError(f"--resume: the data has {num_classes} classes, the run in {out} "
                        f"{ck['num_classes']}")
    if config["train_subset"]:
        x_img, y = x_img[:config["train_subset"]], y[:config["train_subset"]]
    if config["test_subset"]:
        xt_img, yt = xt_img[:config["test_subset"]], yt[:config["test_subset"]]
    x, xt = normalize(x_img, norm), normalize(xt_img, norm)

    init_state = None
    if ck is None and config["init"]:   # read (and check the model name) before building
        init_state, _ = read_weights(config["init"], config["model"], "--init")
    et.set_backend(config["backend"])
    et.manual_seed(config["seed"])
    model = build_model(config["model"], num_classes)
    if init_state is not None:
        load_weights(model, init_state, config["init"], "--init")
    if ck is not None:
        if ck["model_name"] != config["model"]:
            raise UserError(f"--resume: {out} holds a {ck['model_name']} run")
        load_weights(model, ck["model"], os.path.join(out, CHECKPOINT), "--resume")
    model.set_precision(config["precision"])
    params = freeze(model, config["train_only"])
    opt = make_optimizer(config, params)
    metrics = []
    start_epoch = 0
    # A mid-epoch checkpoint (--checkpoint-every) holds the partial epoch: the batches
    # done and the running sums of its metrics; None at an epoch's end (and in
    # checkpoints of versions without --checkpoint-every, which lack the key).
    in_epoch = None
    if ck is not None:
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"--resume: the optimizer state in {out} does not fit: "
                            f"{one_line(e)}") from None
        et.random.set_rng_state(ck["rng"])
        metrics = list(ck["metrics"])
        start_epoch = int(ck["epoch"])
        in_epoch = ck.get("in_epoch")

    n_train, bs = len(x), config["batch_size"]
    steps_per_epoch = (n_train + bs - 1) // bs
    if in_epoch is not None and int(in_epoch["steps_per_epoch"]) != steps_per_epoch:
        # a moved --data-dir with another number of images: the batch order differs
        raise UserError(f"--resume: {out} stopped within epoch {start_epoch + 1} of "
                        f"{in_epoch['steps_per_epoch']} steps; this data gives "
                        f"{steps_per_epoch} steps per epoch (batch {bs}, {n_train} images)")

    prepare_out(out)
    remove_stale_temporaries(out)
    epochs = config["epochs"]
    if start_epoch >= epochs:
        # a kill between the last checkpoint and metrics.jsonl / curves.png leaves
        # those a step behind: bring them up to date (a finished run is left as is)
        if ck is not None and _outputs_behind(out, metrics):
            write_metrics(out, metrics)
            write_curves(out, metrics)
            print(f"{out}: restored {METRICS} and {CURVES} from the checkpoint")
        print(f"{out}: {start_epoch} epoch(s) already done (--epochs {epochs}); nothing to do")
        return 0
    if ck is not None:
        write_metrics(out, metrics)   # drop lines of an epoch the checkpoint does not hold
        if in_epoch is None:
            print(f"resuming {out} after epoch {start_epoch}")
        else:
            print(f"resuming {out} in epoch {start_epoch + 1} after step "
                  f"{in_epoch['batches']}/{steps_per_epoch}")

    every = int(config["checkpoint_every"] or 0)
    total_steps = steps_per_epoch * epochs
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    print(f"{config['model']} ({sum(p.numel() for p in params)} trainable parameters"
          f"{f', {frozen} tensors frozen' if frozen else ''}), {config['data']}: "
          f"{n_train} train / {len(xt)} test images, precision {config['precision']}, "
          f"backend {config['backend']}, {config['optimizer']} lr {config['lr']} "
          f"({config['lr_schedule']}), batch {bs}, epochs {start_epoch + 1}..{epochs}",
          flush=True)
    tqdm = None if args.no_progress else tqdm_or_none()
    crit = et.nn.CrossEntropyLoss()

    def save_checkpoint(done_epochs, step, partial):
        """checkpoint.et: everything an exact continuation needs (RNG state last
        drawn from, optimizer state, metrics so far; `partial` the in_epoch record)."""
        state = {
            "kind": CHECKPOINT_KIND, "edgetrain_version": et.__version__,
            "model_name": config["model"], "num_classes": num_classes,
            "normalization": list(norm), "config": config, "epoch": done_epochs,
            "step": step, "in_epoch": partial,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": et.random.get_rng_state(), "metrics": metrics,
        }
        write_out(os.path.join(out, CHECKPOINT), "checkpoint", lambda f: et.save(state, f))

    for epoch in range(start_epoch, epochs):
        model.train()
        # the epoch's batch order depends on (seed, epoch) alone; a run resumed
        # mid-epoch draws the same order and skips the batches already done
        loader = et.data.DataLoader((x, y), batch_size=bs, shuffle=True,
                                    seed=epoch_seed(config["seed"], epoch))
        skip, loss_sum, correct, seen, done_s = 0, 0.0, 0, 0, 0.0
        if in_epoch is not None and epoch == start_epoch:
            skip = int(in_epoch["batches"])
            loss_sum, correct = float(in_epoch["loss_sum"]), int(in_epoch["correct"])
            seen, done_s = int(in_epoch["seen"]), float(in_epoch["train_seconds"])
        # t0 counts the time the partial epoch took before the restart
        t0 = time.perf_counter() - done_s
        it = itertools.islice(loader, skip, None) if skip else loader
        bar = None
        if tqdm is not None:
            bar = tqdm(it, total=len(loader), initial=skip, desc=f"epoch {epoch + 1}/{epochs}",
                       unit="batch", leave=False, dynamic_ncols=True)
            it = bar
        step = epoch * steps_per_epoch + skip
        for bx, by in it:
            lr = lr_at(config, step, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            logits = model(bx)
            loss = crit(logits, by)
            loss.backward()
            opt.step()
            step += 1
            nb = len(by)
            lv = float(loss.item())
            if not math.isfinite(lv):
                if bar is not None:
                    bar.close()
                raise UserError(f"epoch {epoch + 1}: the loss is {lv} (diverged); try a "
                                f"lower --lr than {config['lr']}")
            loss_sum += lv * nb
            pred = np.asarray(logits.detach().numpy()).argmax(1)
            correct += int((pred == np.asarray(by.numpy())).sum())
            seen += nb
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
            # mid-epoch checkpoint every `every` steps (counted over the whole run);
            # the epoch's last step is checkpointed below, with the epoch's metrics
            if every and step % every == 0 and step % steps_per_epoch != 0:
                save_checkpoint(epoch, step, {
                    "batches": step - epoch * steps_per_epoch,
                    "steps_per_epoch": steps_per_epoch, "loss_sum": loss_sum,
                    "correct": correct, "seen": seen,
                    "train_seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0
        test_loss, test_acc, _ = evaluate_model(model, xt, yt, num_classes)
        seconds = time.perf_counter() - t0
        metrics.append({
            "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "images_per_second": seen / train_s, "seconds": seconds, "train_seconds": train_s,
            "lr": lr, "model": config["model"], "precision": config["precision"],
            "backend": config["backend"], "data": config["data"],
        })
        # checkpoint first: metrics.jsonl and curves.png are rebuilt from it on --resume
        save_checkpoint(epoch + 1, step, None)
        write_metrics(out, metrics)
        write_curves(out, metrics)
        m = metrics[-1]
        print(f"epoch {epoch + 1}/{epochs}: train loss {m['train_loss']:.4f} acc "
              f"{m['train_accuracy']:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
              f"{m['images_per_second']:.0f} images/s, {seconds:.1f} s", flush=True)
    print(f"wrote {os.path.join(out, CHECKPOINT)}, {METRICS}, {CURVES}")
    return 0


def add_parser(sub):
    t = sub.add_parser(
        "train", help="train a model, writing a checkpoint, metrics.jsonl and curves.png",
        description="Train a model on an MNIST-format data set. After every epoch writes "
                    "OUT/checkpoint.et, OUT/metrics.jsonl (one JSON object per epoch) and "
                    "OUT/curves.png, each atomically; with --checkpoint-every STEPS, the "
                    "checkpoint every STEPS steps too. --resume continues a run exactly, "
                    "from its last checkpoint (same final weights as an uninterrupted run).")
    d = TRAIN_DEFAULTS
    # defaults are None here so --resume can tell what was given; the help shows the real ones
    t.add_argument("--model", choices=MODELS, default=None,
                   help=f"network (default {d['model']}); resnets use a 3x3 stem for 28x28 input")
    t.add_argument("--data", choices=DATASETS, default=None,
                   help=f"data set (default {d['data']}, read from {FASHION_DIR}); idx: any "
                        "directory of MNIST-format IDX files given with --data-dir")
    t.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory of the IDX files (train-images-idx3-ubyte[.gz], ...); "
                        "needed for mnist and idx")
    t.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="precision of the conv/linear products (default fp32)")
    t.add_argument("--backend", default=None,
                   help=f"backend of the heavy products: {', '.join(et.backends())} "
                        f"(default {et.get_backend()})")
    t.add_argument("--epochs", type=positive_int, default=None,
                   help=f"total number of epochs (default {d['epochs']}); with --resume, "
                        "may be raised to train longer")
    t.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"mini-batch size (default {d['batch_size']})")
    t.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default 0.05 for sgd, 0.001 for adam)")
    t.add_argument("--lr-schedule", choices=("constant", "linear"), default=None,
                   help="linear: decay to 0 over all --epochs (the default; steadier final "
                        "accuracy), or constant")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="optimizer (default sgd)")
    t.add_argument("--momentum", type=nonneg_float, default=None,
                   help=f"SGD momentum (default {d['momentum']})")
    t.add_argument("--weight-decay", type=nonneg_float, default=None,
                   help="L2 weight decay (default 0)")
    t.add_argument("--seed", type=nonneg_int, default=None,
                   help="seed of the initial weights, batch order and stochastic rounding "
                        "(default 0)")
    t.add_argument("--init", default=None, metavar="FILE",
                   help="initial weights: an edgetrain checkpoint (et.save / a run's "
                        "checkpoint.et) or a PyTorch state_dict saved with torch.save "
                        "(needs torch)")
    t.add_argument("--train-only", default=None, metavar="PREFIXES",
                   help="comma-separated parameter-name prefixes, e.g. fc or layer4,fc: only "
                        "matching parameters are trained, the others frozen (no weight "
                        "gradients computed; BatchNorm running statistics still update)")
    t.add_argument("--out", required=True, metavar="DIR",
                   help="run directory (created if needed)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (an epoch's end, "
                        "or a step within one with --checkpoint-every), with its options")
    t.add_argument("--checkpoint-every", type=nonneg_int, default=None, metavar="STEPS",
                   help="also write the checkpoint every STEPS training steps within epochs "
                        "(position in the epoch, optimizer and RNG state, metrics so far), so "
                        "a killed run loses at most STEPS steps; 0: at epoch ends only (the "
                        "default); --resume may change it")
    t.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on the first N training images only (for quick runs)")
    t.add_argument("--test-subset", type=positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only (for quick runs)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (per-epoch lines only)")
    t.set_defaults(func=cmd_train)
    return t
