"""Judging where the samples are: chunks judged apart and joined give the figures of scoring every
image in one place (the way the driver scored before), at any split."""

import copy
import math

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.classifier import FeatureExtractor
from safemax_ray.core.data import load_dataset
from safemax_ray.core.metrics import accuracy, feature_sums, frechet_from_sums, mean_entropy, unlearning_accuracy
from safemax_ray.core.noise import noise_rate
from safemax_ray.engine import evaluate
from safemax_ray.engine.judging import Judgement, Share, assemble

CPU = torch.device("cpu")


def test_fid_from_added_sums_is_torchmetrics_fid():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 16, generator=g), 0.8 * torch.randn(200, 16, generator=g) + 0.3

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    metric = FrechetInceptionDistance(feature=Identity(), normalize=True, sync_on_compute=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    chunks = [feature_sums(part) for part in fake.split(37)]
    fake_sums = {k: sum(c[k] for c in chunks) for k in chunks[0]}
    assert frechet_from_sums(feature_sums(real), fake_sums) == pytest.approx(float(metric.compute()), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_from_sums(feature_sums(real), feature_sums(fake[:1]))


def _one_place(images, labels, forget, classifier, data, threshold):
    """The figures as the driver computed them from every image (before scoring moved to the samples)."""
    logits = torch.cat([classifier(chunk) for chunk in images.split(1024)]).detach()
    is_forget = torch.isin(labels, torch.tensor(forget))
    real = data.images[~torch.isin(data.labels, torch.tensor(forget))]
    fid = FrechetInceptionDistance(
        feature=FeatureExtractor(copy.deepcopy(classifier)), normalize=True, sync_on_compute=False
    )
    with torch.no_grad():
        for chunk in real.split(1024):
            fid.update(chunk, real=True)
        fid.update(images[~is_forget], real=False)
    return {
        "ua": unlearning_accuracy(logits[is_forget], labels[is_forget]),
        "entropy": mean_entropy(logits[is_forget]),
        "fid": float(fid.compute()),
        "retain_acc": accuracy(logits[~is_forget], labels[~is_forget]),
        "noise_forget": noise_rate(images[is_forget], threshold),
        "noise_retain": noise_rate(images[~is_forget], threshold),
    }


@pytest.mark.parametrize("chunk", [7, 16, 200])
def test_chunks_judged_apart_give_the_figures_of_scoring_every_image_at_once(tiny_assets, chunk):
    cfg = UnlearnConfig(
        forget_class=[2, 5], classifier=tiny_assets[1], eval=EvalConfig(n_forget_samples=12, batch_size=chunk)
    )
    data = load_dataset("digits")
    labels = evaluate.eval_labels(10, cfg.classes_given(), cfg.eval)
    # Stand-ins for samples: real digits of each label, half of them drowned in noise.
    g = torch.Generator().manual_seed(1)
    images = torch.stack([data.images[data.labels == c][i % 20] for i, c in enumerate(labels.tolist())])
    images[::2] = (images[::2] + torch.randn(images[::2].shape, generator=g)).clamp(-1, 1)
    judge = evaluate.class_judge(cfg, data, CPU)
    plan = evaluate.chunks_of(labels, cfg.eval)
    shares = [Share.of({c: judge(images[ch.start : ch.stop], ch)}) for c, ch in enumerate(plan)]
    judged = assemble(shares[::-1])  # the shares arrive in any order
    real = evaluate.Reference.of(judge, data, [2, 5])
    figures = evaluate.result(judged, labels, [2, 5], real, "classifier")
    expected = _one_place(images, labels, [2, 5], judge.classifier, data, judge.noise_threshold)
    for name, value in expected.items():
        assert getattr(figures, name) == pytest.approx(value, rel=1e-5, abs=1e-5), name
    assert figures.intervals["fid"][0] < figures.fid < figures.intervals["fid"][1]
    # Only the grid's images travel: each class's first 10 samples, in sample order.
    assert judged.per_sample["grid_labels"].tolist() == [c for c in [2, 5, 0, 1, 3, 4, 6, 7, 8, 9] for _ in range(10)]
    grid_index = torch.cat([(labels == c).nonzero().squeeze(1)[:10] for c in [2, 5, 0, 1, 3, 4, 6, 7, 8, 9]])
    assert torch.equal(judged.per_sample["grid"], images[grid_index.sort().values])


@pytest.mark.parametrize("judge_kind", ["classifier", "resnet34"])
def test_a_judge_on_its_classifiers_features_runs_the_classifier_once_with_the_same_figures(tiny_assets, judge_kind):
    """FID on the classifier's own features (no Inception weights): logits and features come from one
    pass of its body, and the judgement is bit for bit that of two separate passes."""
    from dataclasses import replace

    from safemax_ray.core.resnet_judge import ResNetJudge
    from safemax_ray.engine.judging import Chunk

    judge = evaluate.class_judge(UnlearnConfig(classifier=tiny_assets[1]), load_dataset("digits"), CPU)
    if judge_kind == "resnet34":  # the paper's judge, random weights, on 3-channel images
        torch.manual_seed(0)
        resnet = ResNetJudge(10).eval()
        judge = replace(judge, classifier=resnet, features=FeatureExtractor(resnet))
    images = torch.rand(6, 1 if judge_kind == "classifier" else 3, 8, 8) * 2 - 1
    apart = replace(judge, features=FeatureExtractor(copy.deepcopy(judge.classifier)))  # as with other features
    body = judge.classifier.body if judge_kind == "classifier" else judge.classifier.net.layer1
    passes = []
    body.register_forward_hook(lambda *_: passes.append(1))
    once = judge(images, Chunk(label=3, part=0, start=0, stop=6, offset=0))
    assert len(passes) == 1
    twice = apart(images, Chunk(label=3, part=0, start=0, stop=6, offset=0))
    assert len(passes) == 2  # the copy's body is not hooked: one more pass of the original, for the logits
    for key in ("logits", "features", "noise", "grid"):
        assert torch.equal(once.per_sample[key], twice.per_sample[key]), key


def test_a_judgement_survives_the_cache_format():
    judged = Judgement({"logits": torch.randn(5, 3), "noise": torch.rand(5) < 0.5, "features": torch.randn(5, 4)})
    back = Judgement.from_tensors(judged.tensors())
    assert back.per_sample.keys() == judged.per_sample.keys()
    assert all(torch.equal(back.per_sample[k], judged.per_sample[k]) for k in judged.per_sample)


def test_kid_over_subsets_is_torchmetrics_kid():
    from torchmetrics.image.kid import KernelInceptionDistance

    from safemax_ray.core.metrics import kid

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(50, 8, generator=g), 0.7 * torch.randn(40, 8, generator=g) + 0.2

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    # torchmetrics draws its subsets from the global generator, in its own order: compare what the
    # subsets estimate, over many of them.
    torch.manual_seed(0)
    many = KernelInceptionDistance(feature=Identity(), subsets=2000, subset_size=30, sync_on_compute=False)
    many.update(real, real=True)
    many.update(fake, real=False)
    theirs_mean, theirs_std = (float(v) for v in many.compute())
    ours_mean, ours_std = kid(fake, real, subsets=2000, subset_size=30)
    assert ours_mean == pytest.approx(theirs_mean, rel=0.02) and ours_std == pytest.approx(theirs_std, rel=0.1)
    assert kid(fake, real, subsets=7, subset_size=30) == kid(fake, real, subsets=7, subset_size=30)  # fixed seed
    assert kid(fake, real[:40], subset_size=1000)[1] < 1e-12  # subsets as large as both sides: all, every time
    assert math.isnan(kid(fake[:1], real)[0])


def test_kid_is_torchmetrics_unbiased_mmd_and_tells_distributions_apart():
    from torchmetrics.image.kid import poly_mmd

    from safemax_ray.core.metrics import kid_mmd

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 16, generator=g, dtype=torch.float64), torch.randn(60, 16, generator=g, dtype=torch.float64)
    assert kid_mmd(x, y) == pytest.approx(float(poly_mmd(y, x)), rel=1e-12)  # equal sizes: torchmetrics' formula
    same = kid_mmd(torch.randn(400, 16, generator=g), torch.randn(300, 16, generator=g))
    shifted = kid_mmd(torch.randn(400, 16, generator=g) + 0.5, torch.randn(300, 16, generator=g))
    assert abs(same) < 0.05 < shifted  # unbiased: ~0 for one distribution, whatever the sizes
    assert math.isnan(kid_mmd(x[:1], y))
