"""`hf-train`: ResNet-50 on an offline-resolved ImageNet copy with Composer.

Configured by a YAML/JSON file (`--config-file`) and flags (flags win). Single node:
`hf-train --config-file train.yaml`. Multi-GPU / multi-node: Composer's launcher sets
RANK, WORLD_SIZE, LOCAL_RANK, NODE_RANK, MASTER_ADDR, MASTER_PORT for each process, e.g.
`composer -n 8 --world_size 16 --node_rank 0 --master_addr HOST0 --master_port 7501
-m hf_loader.train --config-file train.yaml`; the loaders shard with a DistributedSampler
from RANK/WORLD_SIZE and Composer initializes the process group from the same variables.

Checkpoints and restarts follow Composer's Trainer: with `save_folder` set, checkpoints are
written there every `save_interval` (and `save_latest_filename`, default latest-rank{rank}.pt,
links the newest); with `autoresume: true` (needs `save_folder` and `run_name`, both the same
for every start of the job) a start continues from that newest checkpoint: model, optimizer,
schedule, timestamp and sample counter. On SIGTERM every rank finishes the batch in flight,
a checkpoint is written (with `save_folder` set) and the job exits 0 (see stop.py). Under
systemd, start it through `python -m hf_loader.launch --stop-timeout S` instead of `composer`:
Composer's launcher alone does not pass SIGTERM on to the ranks (see launch.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from . import sigterm
from .cli import output
from .cli.exitcodes import TRAIN
from .configfile import load_config_file
from .env import force_offline
from .errors import ConfigError, HFLoaderError

PROG = "hf-train"

DEFAULTS = {
    "dataset": "ILSVRC/imagenet-1k",
    "config": None,
    "revision": None,
    "train_split": "train",
    "eval_split": "validation",
    "allow_convert": False,
    "num_classes": None,  # None: from the label ClassLabel
    "batch_size": 256,  # per device
    "eval_batch_size": 256,
    "workers": "auto",  # auto: the CPUs this process may use per local GPU, less one, at most 16
    "crop_size": 224,
    "val_resize": 256,
    "output": "uint8",  # normalize on the device
    "crop_decode": True,  # decode only the random crop's window of each JPEG (libjpeg-turbo 3)
    "reuse_batch_memory": True,  # workers reuse shared batch buffers (x86_64; see batches.py)
    "max_duration": "90ep",
    "eval_interval": "1ep",
    "eval_subset_num_batches": -1,
    "lr": 2.048,
    "momentum": 0.875,
    "weight_decay": 5.0e-5,
    "warmup": "8ep",
    "label_smoothing": 0.1,
    "device": None,  # None: gpu if available else cpu
    "precision": None,  # None: amp_bf16 on gpu, fp32 on cpu
    "channels_last": True,  # model and batches in NHWC (what cuDNN's tensor cores read)
    "cudnn_benchmark": True,  # cuDNN times its algorithms for each new shape, keeps the fastest
    "foreach_optimizer": True,  # DecoupledSGDW's update in multi-tensor kernels (same result)
    "compile": False,  # torch.compile the model through Composer (compile_config); not measured
    "seed": 17,
    "save_folder": None,  # checkpoints; Composer fills in {run_name}
    "save_interval": "1ep",
    "save_latest_filename": "latest-rank{rank}.pt",  # Composer's: the newest checkpoint's link
    "save_num_checkpoints_to_keep": -1,  # -1: all; the oldest are removed first
    "run_name": None,  # None: Composer's COMPOSER_RUN_NAME or RUN_NAME, else a random name
    "autoresume": False,  # continue from save_folder's newest checkpoint (save_folder, run_name)
    "progress_bar": False,
    "log_to_console": True,
    "speed_window": 20,  # batches averaged for throughput/samples_per_sec; 0: no speed logging
}


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def build_config(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        epilog=TRAIN.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", help="YAML or JSON file with the keys below")
    for key, default in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(
                flag, dest=key, type=_parse_value, default=argparse.SUPPRESS, metavar="true|false"
            )
        else:
            p.add_argument(
                flag,
                dest=key,
                type=_parse_value,
                default=argparse.SUPPRESS,
                help=f"(default: {default})",
            )
    args = vars(p.parse_args(argv))
    cfg = dict(DEFAULTS)
    if args.get("config_file"):
        cfg.update(load_config_file(args.pop("config_file"), DEFAULTS))
    args.pop("config_file", None)
    cfg.update(args)
    for key in ("max_duration", "eval_interval", "warmup", "save_interval"):
        if cfg[key] is not None:
            cfg[key] = str(cfg[key])
    resolve_workers(cfg["workers"])  # a bad value is a usage error before anything is read
    check_checkpointing(cfg)
    return cfg


def check_checkpointing(cfg: dict) -> None:
    """Composer's own conditions for autoresume, as usage errors that name the key and the fix.

    Composer raises a ValueError only once the model is built (and for a missing run_name, on
    each rank); here they are found before anything is read.
    """
    if not isinstance(cfg["autoresume"], bool):
        raise ConfigError(
            f"autoresume must be true or false; got {cfg['autoresume']!r}",
            remedy="set autoresume: true (continue from the newest checkpoint) or false",
        )
    for key in ("save_folder", "run_name", "save_latest_filename"):
        if cfg[key] is not None and (not isinstance(cfg[key], str) or not cfg[key].strip()):
            raise ConfigError(
                f"{key} must be a non-empty string or null; got {cfg[key]!r}",
                remedy=f"set {key} to a name such as {DEFAULTS[key] or 'resnet50-imagenet'!r}"
                " or leave it out",
            )
    keep = cfg["save_num_checkpoints_to_keep"]
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < -1:
        raise ConfigError(
            f"save_num_checkpoints_to_keep must be -1 (all) or a count; got {keep!r}",
            remedy="set save_num_checkpoints_to_keep: -1, or a count such as 3",
        )
    if not cfg["autoresume"]:
        return
    if not cfg["save_folder"]:
        raise ConfigError(
            "autoresume is on but save_folder is not set: nowhere to look for a checkpoint",
            remedy="set save_folder to a folder every rank of the job can write and read"
            " (e.g. save_folder: /data/checkpoints), or set autoresume: false",
        )
    if not (cfg["run_name"] or os.environ.get("COMPOSER_RUN_NAME") or os.environ.get("RUN_NAME")):
        raise ConfigError(
            "autoresume is on but run_name is not set: Composer would pick a new random name at"
            " each start and never find the last one's checkpoints",
            remedy="set run_name to a name kept for every start of this job"
            " (e.g. run_name: resnet50-imagenet), or set autoresume: false",
        )
    if not cfg["save_latest_filename"]:
        raise ConfigError(
            "autoresume is on but save_latest_filename is empty: autoresume finds the newest"
            " checkpoint through that link",
            remedy=f"leave save_latest_filename out (default {DEFAULTS['save_latest_filename']})",
        )


def auto_workers(cpus: int, local_processes: int, cap: int = 16) -> int:
    """DataLoader workers per training process: its share of the CPUs, one left for itself."""
    return max(1, min(cap, cpus // max(1, local_processes) - 1))


def resolve_workers(value) -> int:
    """`workers` from the config: a count, or "auto" (see `auto_workers`)."""
    if value == "auto":
        import torch

        local = os.environ.get("LOCAL_WORLD_SIZE")
        processes = int(local) if local else max(1, torch.cuda.device_count())
        return auto_workers(len(os.sched_getaffinity(0)), processes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"workers must be a count of 0 or more, or auto; got {value!r}",
            remedy="set workers: auto (a share of the CPUs per GPU) or a number such as 8",
        )
    return value


def build_model(num_classes: int, channels_last: bool = False):
    """torchvision ResNet-50 in a ComposerClassifier; uint8 input is normalized in forward."""
    import torch
    from composer.models import ComposerClassifier
    from torchvision.models import resnet50

    from .transforms import normalize_chw

    class NormalizeOnDevice(torch.nn.Module):
        """uint8 NCHW -> float normalized (ImageNet mean/std), on whatever device x is."""

        def forward(self, x):
            return normalize_chw(x) if x.dtype == torch.uint8 else x

    module = torch.nn.Sequential(
        NormalizeOnDevice(), resnet50(weights=None, num_classes=num_classes)
    )
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return ComposerClassifier(module=module, num_classes=num_classes)


def _num_classes(ds) -> int:
    feat = ds.features.get("label") if ds.features else None
    n = getattr(feat, "num_classes", None)
    if not n:
        raise ConfigError(
            "the label column has no ClassLabel: number of classes unknown",
            remedy="set num_classes in the config file or --num-classes",
        )
    return n


def train(cfg: dict, **trainer_overrides):
    """Build loaders + model and run `Trainer.fit`; returns the Trainer."""
    force_offline()
    import torch
    from composer import Trainer
    from composer.callbacks import SpeedMonitor
    from composer.optim import CosineAnnealingWithWarmupScheduler, DecoupledSGDW

    from .data import LoaderConfig, build_dataloader, dist_env, make_dataspec
    from .optim import ForeachDecoupledSGDW
    from .resolve import load_split, resolve
    from .stop import SharedSaveFolder, StopOnSignal, signal_files_per_node

    # Importing Composer's engine (just above) made SIGTERM its own sys.exit(143): record it
    # again from here on, before the dataset, the loaders and the model, which take a while. A
    # stop during that start-up then ends the job at fit's start on every rank
    # (stop.StopOnSignal.fit_start), exit 0, instead of exit 143 on the signalled rank alone
    # while the other nodes' ranks wait for it.
    previous = sigterm.install()
    try:
        rank, world = dist_env()
        res = resolve(
            cfg["dataset"],
            cfg["config"],
            cfg["revision"],
            allow_convert=cfg["allow_convert"] and rank == 0,
        )
        train_ds = load_split(res, cfg["train_split"])
        num_classes = cfg["num_classes"] or _num_classes(train_ds)
        base = LoaderConfig(
            workers=resolve_workers(cfg["workers"]),
            output=cfg["output"],
            crop_decode=cfg["crop_decode"],
            reuse_batch_memory=cfg["reuse_batch_memory"],
            crop_size=cfg["crop_size"],
            val_resize=cfg["val_resize"],
            seed=cfg["seed"],
        )
        train_loader = build_dataloader(
            train_ds, True, dataclasses.replace(base, batch_size=cfg["batch_size"]), rank, world
        )
        eval_spec = None
        if cfg["eval_split"]:
            eval_ds = load_split(res, cfg["eval_split"])
            eval_loader = build_dataloader(
                eval_ds,
                False,
                dataclasses.replace(base, batch_size=cfg["eval_batch_size"]),
                rank,
                world,
            )
            eval_spec = make_dataspec(eval_loader, channels_last=cfg["channels_last"])
        model = build_model(num_classes, channels_last=cfg["channels_last"])
        if cfg["label_smoothing"]:
            model._loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        optimizer_class = ForeachDecoupledSGDW if cfg["foreach_optimizer"] else DecoupledSGDW
        optimizer = optimizer_class(
            model.parameters(),
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            weight_decay=cfg["weight_decay"],
        )
        device = cfg["device"] or ("gpu" if torch.cuda.is_available() else "cpu")
        precision = cfg["precision"] or ("amp_bf16" if device == "gpu" else "fp32")
        if device == "gpu":
            torch.backends.cudnn.benchmark = bool(cfg["cudnn_benchmark"])
        kwargs = {
            "model": model,
            "train_dataloader": make_dataspec(train_loader, channels_last=cfg["channels_last"]),
            "eval_dataloader": eval_spec,
            "eval_interval": cfg["eval_interval"],
            "eval_subset_num_batches": cfg["eval_subset_num_batches"],
            "optimizers": optimizer,
            "schedulers": CosineAnnealingWithWarmupScheduler(t_warmup=cfg["warmup"]),
            "max_duration": cfg["max_duration"],
            "device": device,
            "precision": precision,
            "seed": cfg["seed"],
            "save_folder": cfg["save_folder"],
            "save_interval": cfg["save_interval"],
            "save_latest_filename": cfg["save_latest_filename"],
            "save_num_checkpoints_to_keep": cfg["save_num_checkpoints_to_keep"],
            "run_name": cfg["run_name"],
            "autoresume": cfg["autoresume"],
            "progress_bar": cfg["progress_bar"],
            "log_to_console": cfg["log_to_console"],
            "compile_config": {} if cfg["compile"] else None,
        }
        speed = [SpeedMonitor(window_size=int(cfg["speed_window"]))] if cfg["speed_window"] else []
        stopper = StopOnSignal()
        shared = [SharedSaveFolder(cfg["save_folder"])] if cfg["autoresume"] else []
        kwargs["callbacks"] = (
            shared + [stopper] + speed + list(trainer_overrides.pop("callbacks", []))
        )
        kwargs.update(trainer_overrides)
        signal_files_per_node()  # before the Trainer: its autoresume writes them
        trainer = Trainer(**kwargs)
        trainer.fit()
    finally:
        sigterm.restore(previous)
    trainer.stopper = stopper
    return trainer


def main(argv: list[str] | None = None) -> int:
    previous = sigterm.install()  # first: a stop during start-up is recorded, not fatal
    try:
        return _main(argv)
    finally:
        sigterm.restore(previous)


def _main(argv: list[str] | None) -> int:
    try:
        cfg = build_config(argv)
    except SystemExit as e:
        return output.parser_exit_code(e)
    except HFLoaderError as e:
        return output.print_error(PROG, e)
    try:
        trainer = train(cfg)
    except HFLoaderError as e:
        return output.print_error(PROG, e)
    except OSError as e:  # the host refused: a read-only or full checkpoint folder, an I/O error
        return output.print_error(PROG, output.unexpected(e, within=cfg.get("save_folder")))
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    sampler = getattr(trainer.state.train_dataloader, "sampler", None)
    # a streamed hub snapshot has no sampler with a length: the stream is split by node
    source = (
        f"{type(sampler).__name__} with {len(sampler)} samples"
        if hasattr(sampler, "__len__")
        else "a stream of the hub snapshot"
    )
    stopper = trainer.stopper
    batch, sample = int(trainer.state.timestamp.batch), int(trainer.state.timestamp.sample)
    start_batch, start_sample = stopper.resumed_from or (0, 0)
    # A fresh run's line is as before; a resumed or stopped one adds the sample counter.
    counter = f", {sample} samples" if start_batch or stopper.stopped_by else ""
    if start_batch:
        counter += f", resumed from batch {start_batch} sample {start_sample}"
    outcome = "done"
    if stopper.stopped_by:
        from .stop import latest_checkpoint

        checkpoint = latest_checkpoint(trainer.state)
        if checkpoint:
            saved = f"checkpoint {checkpoint}"
        elif not cfg["save_folder"]:
            saved = "no checkpoint: save_folder is not set"
        elif rank != 0:
            saved = "checkpoint written by rank 0"
        else:
            saved = "no new checkpoint: no batch was trained in this run"
        outcome = f"stopped by {stopper.stopped_by} after batch {batch}, {saved}"
    print(f"hf-train: {outcome} (rank {rank} of {world}, {source}, {batch} batches{counter})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
