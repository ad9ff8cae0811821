"""`safemax-ray pretrain`: the base diffusion model and the evaluation classifier."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from safemax_ray.core.models import PRESETS

    p = sub.add_parser("pretrain", help="train the base diffusion model and the evaluation classifier")
    p.add_argument("--dataset", default="digits", choices=["digits", "cifar10", "imagefolder"])
    p.add_argument("--data-root")
    p.add_argument("--image-size", type=int)
    p.add_argument("--output", default="pretrained", help="folder for model/ and classifier/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    layouts = "; ".join(f"{name}: {preset.about}" for name, preset in PRESETS.items())
    p.add_argument("--arch", default="digits-tiny", choices=list(PRESETS), help="UNet layout: " + layouts)
    p.add_argument("--timesteps", type=int, help="diffusion steps T (default: the preset's; digits 100, CIFAR 1000)")
    p.add_argument("--channels", type=int, nargs="+", help="other block widths for the preset (default: its own)")
    p.add_argument("--classifier-steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from safemax_ray.cli.output import console
    from safemax_ray.engine.pretrain import PretrainConfig, run_pretrain

    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        arch=args.arch,
        num_train_timesteps=args.timesteps,
        block_out_channels=tuple(args.channels) if args.channels else None,
        classifier_steps=args.classifier_steps,
        seed=args.seed,
    )
    run_pretrain(
        config, args.dataset, args.data_root, args.image_size, args.output, args.overwrite, args.device, console
    )
    return 0
