"""How high can the entropy H of forget-class samples go under this evaluation classifier?

H is the classifier's doubt, so it is bounded by what the classifier says about the samples SAFEMax
aims at, not by ln K. This prints H and UA for reference inputs scored by the same classifier:

- Gaussian N(0, I) noise (the x_T that SAFEMax wants to leave untouched), clamped as samples are, and
  uniform U[-1, 1] noise;
- the SAFEMax optimum: the loss `E[psi(t) ||eps_T - eps_theta(x_t, c_f, t)||^2]` with eps_T independent
  of x_t is minimised by eps_theta(x_t, c_f, t) = 0, so sampling the base model with exactly that
  prediction for c_f (and the base model for the null label that guidance uses) is what a perfectly
  converged SAFEMax run would give;
- optionally, unlearned model folders (`--unlearned DIR ...`), sampled with the same labels and seed.

    .venv/bin/python scripts/entropy_ceiling.py --forget-class 0
"""

from __future__ import annotations

import argparse
import types

import torch
from rich.console import Console
from rich.table import Table

from safemax_ray.core.classifier import load_classifier
from safemax_ray.core.metrics import mean_entropy, unlearning_accuracy
from safemax_ray.core.models import SHIPPED_CLASSIFIER, load_model
from safemax_ray.core.sampling import sample
from safemax_ray.engine.judging import classify


class ForgetOptimum(torch.nn.Module):
    """A UNet that predicts eps = 0 for the forget class (SAFEMax's loss minimiser) and defers to the
    wrapped model for every other label, the null label included."""

    def __init__(self, unet: torch.nn.Module, forget_class: int):
        super().__init__()
        self.unet = unet
        self.forget_class = forget_class
        self.config = unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> types.SimpleNamespace:
        eps = self.unet(x, t, class_labels=class_labels).sample
        is_forget = (class_labels == self.forget_class).view(-1, 1, 1, 1)
        return types.SimpleNamespace(sample=torch.where(is_forget, torch.zeros_like(eps), eps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forget-class", type=int, default=0)
    parser.add_argument("--model", default=None, help="base model folder (default: the shipped digits model)")
    parser.add_argument("--classifier", default=str(SHIPPED_CLASSIFIER))
    parser.add_argument("--unlearned", nargs="*", default=[], help="unlearned model folders to score too")
    parser.add_argument("-n", type=int, default=200, help="samples per row")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sample-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base = load_model(args.model)
    classifier = load_classifier(args.classifier, base.num_classes)
    shape = (args.n, base.unet.config.in_channels, base.unet.config.sample_size, base.unet.config.sample_size)
    generator = torch.Generator().manual_seed(args.seed)
    labels = torch.full((args.n,), args.forget_class)

    def sampled(unet: torch.nn.Module) -> torch.Tensor:
        noise = torch.Generator().manual_seed(args.seed)
        return sample(unet, base.scheduler, labels, base.null_label, noise, args.guidance, args.sample_steps)

    rows = [
        ("N(0, I) noise", torch.randn(shape, generator=generator)),
        ("N(0, I) noise clamped to [-1, 1]", torch.randn(shape, generator=generator).clamp(-1, 1)),
        ("U[-1, 1] noise", torch.rand(shape, generator=generator) * 2 - 1),
        ("base model", sampled(base.unet)),
        ("SAFEMax optimum (eps = 0 for c_f)", sampled(ForgetOptimum(base.unet, args.forget_class))),
    ]
    rows += [(f"unlearned {path}", sampled(load_model(path).unet)) for path in args.unlearned]

    table = Table(
        title=f"forget class {args.forget_class}: {args.n} images a row, w = {args.guidance}, "
        f"ln {base.num_classes} = {torch.log(torch.tensor(float(base.num_classes))):.2f}"
    )
    for column in ("input", "H (nats)", "UA %", "most common label (share)"):
        table.add_column(column, justify="left" if column == "input" else "right")
    for name, images in rows:
        logits = classify(classifier, images)
        top = torch.bincount(logits.argmax(1), minlength=base.num_classes)
        table.add_row(
            name,
            f"{mean_entropy(logits):.3f}",
            f"{unlearning_accuracy(logits, args.forget_class):.1f}",
            f"{int(top.argmax())} ({100 * top.max() / args.n:.0f}%)",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
