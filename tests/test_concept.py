"""Concept runs on a text-to-image pipeline: the tiny random pipeline of tests/text_pipeline.py, offline."""

from pathlib import Path

import pytest
import torch

from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.engine.workloads.concepts import ConceptConfig
from safemax_ray.errors import SafemaxError


def concept_config(pipeline, results_dir, **extra) -> UnlearnConfig:
    return UnlearnConfig(
        workload="concept",
        workload_settings={"pipeline": str(pipeline), "concept": "a dog", "images_per_prompt": 2},
        iterations=extra.pop("iterations", 20),
        batch_size=8,
        results_dir=str(results_dir),
        eval=EvalConfig(sample_steps=5),
        **extra,
    )


def test_prompt_unet_reads_label_i_as_prompt_i(tiny_pipeline):
    from safemax_ray.core.text import encode_prompts, load_pipeline, prompt_model

    pipe = load_pipeline(tiny_pipeline)
    model = prompt_model(pipe, ["a dog", "a house"])
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 50, 90])
    states = encode_prompts(pipe, ["a dog", "a house"])
    with torch.no_grad():
        got = model.unet(x, t, class_labels=torch.tensor([0, 1, 2])).sample
        want = pipe.unet(x, t, encoder_hidden_states=states).sample
    assert model.num_classes == 2 and model.null_label == 2  # the empty prompt is the null label
    torch.testing.assert_close(got, want)
    assert set(model.unet.state_dict()) == {f"unet.{k}" for k in pipe.unet.state_dict()}


def test_concept_settings_are_validated(tmp_path):
    with pytest.raises(SafemaxError, match="concept is empty"):
        ConceptConfig(pipeline="p", concept="  ").validate()
    with pytest.raises(SafemaxError, match="needs --pipeline"):
        ConceptConfig(concept="a dog").validate()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\n\na puppy on grass\n")
    c = ConceptConfig(pipeline="p", concept="A Dog!", prompts_file=str(prompts))
    assert c.prompts() == ["a dog", "a puppy on grass"] and c.slug() == "a-dog"
    cfg = UnlearnConfig(workload="concept", workload_settings=vars(c))
    from safemax_ray.engine.workloads import workload_for

    workload = workload_for(cfg)
    assert workload.forget_classes() == [0, 1] and workload.data_name() == "prompts"
    assert workload.forget_label() == "a-dog"
    assert ConceptConfig(concept="a cat").prompts()[1] == "a photo of a cat"


def test_safemax_moves_the_concept_to_noise_and_keeps_other_prompts(tiny_pipeline, tmp_path):
    """The done-when of the issue, in numbers: the concept's predictions get closer to eps_T (floor 1)
    and the other prompts' denoising loss does not get worse by more than 5%."""
    from safemax_ray.engine.loop import evaluate_run, new_session, run_setup, train
    from safemax_ray.engine.workloads import workload_for

    cfg = concept_config(tiny_pipeline, tmp_path, iterations=20)
    cfg.validate()
    model, data = workload_for(cfg).open(torch.device("cpu"), str(tmp_path / "cache"))
    assert data.images.shape == (2 * (4 + 6), 4, 8, 8) and data.num_classes == 10
    session = new_session(cfg, model, data, torch.device("cpu"))
    run_setup(session)
    train(session)
    metrics = evaluate_run(session).metrics
    before, after = metrics["base_forget_mse"] - 1, metrics["forget_mse"] - 1
    assert after < 0.6 * before, metrics
    assert metrics["remain_mse"] <= 1.05 * metrics["base_remain_mse"], metrics
    # The latents are cached: a second open reads the same ones.
    _, again = workload_for(cfg).open(torch.device("cpu"), str(tmp_path / "cache"))
    assert torch.equal(again.images, data.images)


def test_forget_images_from_a_folder_replace_the_generated_concept_latents(tiny_pipeline, tmp_path):
    from PIL import Image

    from safemax_ray.engine.workloads import workload_for

    folder = tmp_path / "dogs"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 20), (40 * i, 100, 200)).save(folder / f"{i}.png")
    cfg = concept_config(tiny_pipeline, tmp_path)
    cfg.workload_settings["forget_images"] = str(folder)
    _, data = workload_for(cfg).open(torch.device("cpu"), None)
    assert data.labels[:5].tolist() == [0, 1, 2, 3, 0]  # the images are dealt over the concept's prompts
    assert data.labels[5:].tolist() == [p for p in range(4, 10) for _ in range(2)]  # remain: generated
    assert data.images.shape == (5 + 12, 4, 8, 8)


def test_a_resumed_concept_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_pipeline, tmp_path):
    """Checkpoints of a concept run hold the UNet alone; restoring one continues bit for bit."""
    from safemax_ray.engine import checkpoint
    from safemax_ray.engine.loop import Hooks, open_session, train

    cfg = concept_config(tiny_pipeline, tmp_path, iterations=4)
    cfg.ray.checkpoint_every = 2
    cache, cpu = str(tmp_path / "cache"), torch.device("cpu")
    whole = open_session(cfg, cpu, cache_dir=cache)
    train(whole)
    first = open_session(cfg, cpu, cache_dir=cache)

    def save_and_stop(done):
        checkpoint.save(tmp_path, first.workload, first.model, first.optimizer, first.method.state_dict(), first.state)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, Hooks(on_checkpoint=save_and_stop))
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["scheduler", "unet"]
    resumed = open_session(cfg, cpu, cache_dir=cache)
    resumed.state, _ = checkpoint.restore(tmp_path, resumed.workload, resumed.model.unet, resumed.optimizer)
    train(resumed)
    assert resumed.state.step == 4
    for key, value in whole.model.unet.state_dict().items():
        assert torch.equal(resumed.model.unet.state_dict()[key], value), key


@pytest.mark.parametrize(
    "method, options", [("salun", {}), ("sa", {"fisher_samples_per_class": 2, "fisher_timesteps": 2})]
)
def test_the_baselines_run_on_a_pipeline(tiny_pipeline, tmp_path, method, options):
    """Prompts play their classes: SalUn's saliency and pseudo label, SA's Fisher and replay."""
    from safemax_ray.engine.loop import evaluate_run, open_session, run_setup, train

    cfg = concept_config(tiny_pipeline, tmp_path, iterations=2, method=method, method_options=options)
    session = open_session(cfg, torch.device("cpu"), cache_dir=str(tmp_path / "cache"))
    before = {k: v.clone() for k, v in session.model.unet.state_dict().items()}
    run_setup(session, cache_dir=str(tmp_path / "cache"))
    train(session)
    metrics = evaluate_run(session).metrics
    assert any(not torch.equal(before[k], v) for k, v in session.model.unet.state_dict().items())
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("forget_mse", "remain_mse"))


def test_batch_and_tune_refuse_a_concept_in_one_line(tmp_path):
    from safemax_ray.drivers.batch import batch_unlearn
    from safemax_ray.drivers.tune import TuneConfig

    cfg = UnlearnConfig(workload="concept", workload_settings={"pipeline": "p", "concept": "a dog"})
    with pytest.raises(SafemaxError, match="forget a concept with one run: safemax-ray unlearn --pipeline"):
        batch_unlearn(cfg, [0, 1])
    with pytest.raises(SafemaxError, match="tune trials run one class at a time.*forget a concept with one run"):
        TuneConfig(run={"concept": {"pipeline": "p", "concept": "a dog"}}).validate()


def test_cli_concept_run_refuses_a_missing_pipeline_in_one_line(tmp_path, capsys):
    from safemax_ray.cli import main

    assert main(["unlearn", "--pipeline", str(tmp_path / "none"), "--concept", "x"]) == 2
    assert capsys.readouterr().out.strip().splitlines() == [
        f"error: {tmp_path / 'none'} is not a diffusers text-to-image folder: missing "
        "unet, vae, text_encoder, tokenizer, scheduler (as written by StableDiffusionPipeline.save_pretrained)"
    ]


def test_core_install_does_not_need_transformers():
    """transformers and eval-unlearn come with extras only, and no module imports them at load time except
    the Eval-Unlearn plugin (loaded by Eval-Unlearn itself). An import hook cannot show this in a venv that
    has transformers: diffusers and torchmetrics import it whenever it is installed."""
    import ast
    from importlib.metadata import requires

    import safemax_ray

    needs = [r for r in requires("safemax-ray") if "transformers" in r or "eval-unlearn" in r]
    assert needs and all("extra ==" in r for r in needs), needs
    package = Path(safemax_ray.__file__).parent
    for module in package.rglob("*.py"):
        top = ast.parse(module.read_text()).body
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        heavy = {n.split(".")[0] for n in names} & {"transformers", "eval_unlearn"}
        assert not heavy or module == package / "plugins" / "eval_unlearn.py", (module, heavy)


def test_two_workers_generate_the_training_latents_once(tiny_pipeline, tmp_path, monkeypatch):
    """A concept run's workers all open the workload at once: the first to claim the latents generates
    them, the others wait for the cache entry and read the same tensors."""
    import threading

    from safemax_ray import cache
    from safemax_ray.engine.workloads.concepts import ConceptWorkload

    monkeypatch.setattr(cache, "HEARTBEAT_S", 0.4)
    calls = []
    generate = ConceptWorkload._generate
    monkeypatch.setattr(ConceptWorkload, "_generate", lambda self, *a: calls.append(1) or generate(self, *a))
    cfg = concept_config(tiny_pipeline, tmp_path)
    opened = {}

    def worker(rank):
        opened[rank] = ConceptWorkload(cfg).open(torch.device("cpu"), str(tmp_path / "cache"))[1]

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert torch.equal(opened[0].images, opened[1].images)
