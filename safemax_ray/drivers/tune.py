"""The Tune driver: Optuna searches the learning rate, iterations and the method's options for one class.

The search space names common settings plainly (`lr`, `iterations`) and the method's own options as
`method.<option>` (SAFEMax: `method.lam`, `method.alpha`, `method.target`); a method lists the options it
allows to be searched in `SEARCHABLE`.

Ray 2.60's Train V2 pattern: each Tune trial is a function that builds a `TorchTrainer` for one SAFEMax
run and calls `fit()`; `TuneReportCallback` forwards the workers' reports to Tune. OptunaSearch proposes
the next point from the finished trials' final figures, starting from the paper's defaults
(`points_to_evaluate`). Two objectives: the scalar `score` of `safemax_ray.core.objective`, or the Pareto
front over (UA up, H up, FID down). ASHA can stop weak trials early on the score; intermediate reports
then carry a cheap probe score (small forget and retained samples, no FID term).

A study may judge its trials with a cheaper screen (`screen:` fewer samples and/or sampling steps); its
best `screen.rejudge` trials are then judged again with the full evaluation, the study prints how well
the screen ranked them (Spearman's rho against the full judgement), and the best is chosen among them.

Afterwards every trial becomes a Parquet row (with trial_id, study, score, pareto; a row's evaluation
settings say whether the screen or the full evaluation judged it) and the best configuration is
written as a YAML file that `safemax-ray unlearn --config` accepts.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

from safemax_ray import storage
from safemax_ray.config import EvalConfig, UnlearnConfig
from safemax_ray.core.objective import PARETO_OBJECTIVES, pareto_mask
from safemax_ray.drivers.finish import finish_run, start_tracking
from safemax_ray.drivers.preflight import preflight
from safemax_ray.engine.outcome import Outcome, Status
from safemax_ray.engine.workloads import workload_for
from safemax_ray.errors import SafemaxError
from safemax_ray.methods import UnlearningMethod, get_method
from safemax_ray.results import layout
from safemax_ray.schema import Settings, apply_overrides, check_fields, checked, from_dict, read_yaml, to_dict
from safemax_ray.tracking import UNTRACKED, Tracker, tracking_uri

if TYPE_CHECKING:
    from ray.tune.search.optuna import OptunaSearch

RUN_PARAMS = ("lr", "iterations")  # searchable settings of every run; the method's go under "method."
METHOD_PREFIX = "method."


@dataclass
class SearchRange(Settings):
    """A numeric range (low, high; log scale; grid step) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None  # grid spacing (iterations: e.g. 50)
    choices: list[Any] | None = None

    def validate(self, name: str) -> None:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise SafemaxError(f"search.{name}: give either a non-empty choices list or low and high")
            return
        if self.low is None or self.high is None:
            raise SafemaxError(f"search.{name}: a range needs low and high (or give choices)")
        if not self.low <= self.high:
            raise SafemaxError(f"search.{name}: low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise SafemaxError(f"search.{name}: a log-scale range needs low > 0")


def default_space(method: type[UnlearningMethod]) -> dict[str, SearchRange]:
    """lr and iterations, and the ranges the method declares (`SEARCH_SPACE`)."""
    return {
        **{METHOD_PREFIX + name: SearchRange(**spec) for name, spec in method.SEARCH_SPACE.items()},
        "lr": SearchRange(1e-4, 1e-2, log=True),
        "iterations": SearchRange(50, 300, step=50),
    }


def default_point(method: type[UnlearningMethod], space: dict[str, SearchRange]) -> dict[str, Any]:
    """The method's own defaults, where the search starts: its lr, 200 iterations, its options."""
    defaults = method.Options()
    known = {"lr": method.DEFAULT_LR, "iterations": 200}
    return {k: known[k] if k in known else getattr(defaults, k.removeprefix(METHOD_PREFIX)) for k in space}


@dataclass
class Budget(Settings):
    num_samples: int = 8
    max_concurrent: int | None = None  # None: as many as the cluster's resources fit
    workers_per_trial: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None  # None: GPUs when the cluster has them

    @property
    def cpus_per_trial(self) -> float:
        """The trial's own CPU (the function trainable that drives the run) plus its workers' CPUs."""
        return 1 + self.workers_per_trial * self.cpus_per_worker


@dataclass
class AshaSettings(Settings):
    enabled: bool = False
    grace_period: int = 50  # iterations before a trial may be stopped
    reduction_factor: float = 2.0
    probe_samples: int = 32  # forget-class samples in each intermediate probe


@dataclass
class ScreenSettings(Settings):
    """A cheaper judgement for the trials: what it changes of the run's `eval` settings, and how many of
    the best trials are judged again with the full evaluation."""

    n_forget_samples: int | None = None
    n_retain_per_class: int | None = None
    sample_steps: int | None = None
    rejudge: int = 3

    def applied(self, settings: EvalConfig) -> EvalConfig:
        fields = ("n_forget_samples", "n_retain_per_class", "sample_steps")
        return replace(settings, **{k: getattr(self, k) for k in fields if getattr(self, k) is not None})

    def validate(self, num_samples: int) -> None:
        if not 2 <= self.rejudge <= num_samples:
            raise SafemaxError(
                f"screen.rejudge must be between 2 (a rank agreement needs two trials) and "
                f"budget.num_samples ({num_samples}), got {self.rejudge}"
            )


@dataclass
class TuneConfig(Settings):
    """A search, as written in tune_configs/*.yaml."""

    study: str = "safemax-search"
    forget_class: int = 0
    objective: str = "score"  # or "pareto"
    seed: int = 0
    results_dir: str = "safemax_results"
    address: str | None = None
    search: dict[str, SearchRange] | None = None  # None: the method's default space
    points_to_evaluate: list[dict[str, Any]] | None = None  # None: the method's defaults
    budget: Budget = field(default_factory=Budget)
    asha: AshaSettings = field(default_factory=AshaSettings)
    run: dict[str, Any] = field(default_factory=dict)  # UnlearnConfig settings shared by every trial
    screen: ScreenSettings | None = None  # None: every trial judged with the run's full evaluation
    tracking_uri: str | None = None  # MLflow: the study a parent run, each trial a child ($MLFLOW_TRACKING_URI)

    def validate(self) -> None:
        check_fields(self, "tune config")  # a field set after the config was built
        if self.objective not in ("score", "pareto"):
            raise SafemaxError(f"objective must be 'score' or 'pareto', got {self.objective!r}")
        if self.asha.enabled and self.objective != "score":
            raise SafemaxError("ASHA early stopping needs objective: score (it ranks trials by one number)")
        if self.budget.num_samples < 1 or self.budget.workers_per_trial < 1:
            raise SafemaxError("budget.num_samples and budget.workers_per_trial must be >= 1")
        if self.budget.max_concurrent is not None and self.budget.max_concurrent < 1:
            raise SafemaxError("budget.max_concurrent must be >= 1 or null")
        method = get_method(self.run.get("method", "safemax"))
        if self.search is None:
            self.search = default_space(method)
        if self.points_to_evaluate is None:
            self.points_to_evaluate = [default_point(method, self.search)]
        if not self.search:
            raise SafemaxError("search is empty: name at least one of lr, iterations, method.<option>")
        allowed = [*RUN_PARAMS, *(METHOD_PREFIX + o for o in method.SEARCHABLE)]
        for name, spec in self.search.items():
            if name not in allowed:
                raise SafemaxError(f"search.{name} cannot be searched; searchable: {', '.join(allowed)}")
            spec.validate(name)
        for i, point in enumerate(self.points_to_evaluate):
            if set(point) != set(self.search):
                raise SafemaxError(f"points_to_evaluate[{i}] must set exactly {', '.join(self.search)}")
        for key in ("forget_class", "results_dir", "study", *(k for k in self.search if k in RUN_PARAMS)):
            if key in self.run:
                raise SafemaxError(f"run.{key} is set by the search itself; set it at the top level or in search")
        if self.screen is not None:
            if self.objective != "score":
                raise SafemaxError("screen: needs objective: score (the re-judged trials are the best by score)")
            self.screen.validate(self.budget.num_samples)
        trial = self.trial_config(self.first_point(), screened=True)
        workload_for(trial).require_class_by_class("tune trials")
        trial.validate()

    def first_point(self) -> dict[str, Any]:
        """The first point to evaluate, or the low end (first choice) of every range."""
        if self.points_to_evaluate:
            return dict(self.points_to_evaluate[0])
        return {k: (v.choices[0] if v.choices is not None else v.low) for k, v in self.search.items()}

    def planned_trials(self, screened: bool = True) -> list[UnlearnConfig]:
        """For `--plan`: every trial at the first point, with the largest iteration count searched."""
        return [self.trial_config(self._planned_point(), screened)] * self.budget.num_samples

    def planned_rejudges(self) -> list[UnlearnConfig]:
        """For `--plan`: the full evaluations of the re-judged trials (none without a screen)."""
        return [self.trial_config(self._planned_point())] * (self.screen.rejudge if self.screen else 0)

    def _planned_point(self) -> dict[str, Any]:
        return {**self.first_point(), "iterations": _max_iterations(self)}

    def trial_config(self, params: dict[str, Any], screened: bool = False) -> UnlearnConfig:
        """The run a trial at `params` makes; `screened`: judged with the screen, where there is one."""
        cfg = UnlearnConfig.from_mapping(dict(self.run), where="run")
        if screened and self.screen is not None:
            cfg.eval = self.screen.applied(cfg.eval)
        cfg.forget_class, cfg.study, cfg.results_dir = self.forget_class, self.study, self.results_dir
        cfg.tracking_uri = self.tracking_uri or cfg.tracking_uri
        for name, value in params.items():
            if name.startswith(METHOD_PREFIX):
                cfg.method_options[name.removeprefix(METHOD_PREFIX)] = value
            elif name == "iterations":
                cfg.iterations = int(value)
            else:
                cfg.lr = float(value)
        cfg.ray.num_workers = self.budget.workers_per_trial
        cfg.ray.cpus_per_worker = self.budget.cpus_per_worker
        cfg.ray.use_gpu = self.budget.use_gpu
        cfg.ray.address = self.address
        return cfg


@dataclass
class TuneResult:
    study: str
    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_config_path: str
    trials: list[dict[str, Any]]  # one Parquet row per finished trial
    results_dir: str
    stopped: dict[str, str] = field(default_factory=dict)  # trial id -> why it has no row
    rank_agreement: float | None = None  # Spearman's rho of screen and full scores on the re-judged trials


def load_tune_config(path: str | Path | None = None, **overrides: Any) -> TuneConfig:
    data = read_yaml(path) if path else {}
    cfg = apply_overrides(from_dict(TuneConfig, data, where=str(path or "tune config")), overrides)
    cfg.validate()
    return cfg


def optuna_space(space: dict[str, SearchRange]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, r in space.items():
        if r.choices is not None:
            out[name] = CategoricalDistribution(r.choices)
        elif name == "iterations":
            out[name] = IntDistribution(int(r.low), int(r.high), log=r.log, step=int(r.step or 1))
        else:
            out[name] = FloatDistribution(r.low, r.high, log=r.log, step=r.step)
    return out


def searcher(cfg: TuneConfig) -> OptunaSearch:
    """Optuna over the config's space, trying `points_to_evaluate` first: a single-objective study on
    the score, or a multi-objective one on (UA up, H up, FID down) for the Pareto front."""
    from ray.tune.search.optuna import OptunaSearch

    if cfg.objective == "score":
        metric, mode = "score", "max"
    else:
        metric, mode = [m for m, _ in PARETO_OBJECTIVES], [d for _, d in PARETO_OBJECTIVES]
    points = [dict(p) for p in cfg.points_to_evaluate] or None
    space = optuna_space(cfg.search)
    return OptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points, seed=cfg.seed)


def max_concurrent(cfg: TuneConfig, resources: dict[str, float], use_gpu: bool) -> int:
    """How many trials fit at once: the trial's own CPU plus its workers' CPUs (and GPUs)."""
    if cfg.budget.max_concurrent:
        return cfg.budget.max_concurrent
    fits = int(resources.get("CPU", 1) // cfg.budget.cpus_per_trial)
    if use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // cfg.budget.workers_per_trial))
    return max(1, min(fits, cfg.budget.num_samples))


def _trial(
    params: dict[str, Any],
    *,
    tune_cfg: dict[str, Any],
    use_gpu: bool,
    cache_dir: str,
    storage_path: str,
    parent: Tracker,
) -> None:
    """One Tune trial: a full run on its own Ray Train worker group, then its evaluation; tracked as a
    child of the study's MLflow run (the driver closes it with the trial's row)."""
    import ray.tune

    from safemax_ray.ray.run import train_and_evaluate
    from safemax_ray.ray.tune_reports import MidRunProbes

    # Tune reuses this actor for the next trial only if this trial's thread ends within this many seconds
    # of being stopped (ASHA), read from this process's environment then; Ray's 2 s default is too short
    # for a Ray Train run to wind down on a busy node, and the next trial would fail instead of waiting.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    cfg = from_dict(TuneConfig, tune_cfg)
    trial = cfg.trial_config(params, screened=True)
    name = f"{cfg.study}-{ray.tune.get_context().get_trial_id()}"
    tracker = start_tracking(trial, name, parent) if parent else UNTRACKED
    with tracker.failing_on_error():
        outcome = train_and_evaluate(
            trial,
            name=name,
            storage_path=storage_path,
            use_gpu=use_gpu,
            cache_dir=cache_dir,
            callbacks=[MidRunProbes()] if cfg.asha.enabled else None,
            probe_samples=cfg.asha.probe_samples if cfg.asha.enabled else None,
            tracker=tracker,
        ).require(Status.FINISHED)
    checkpoint = _uri(outcome.checkpoint)
    ray.tune.report({**outcome.metrics, "checkpoint_path": checkpoint, "mlflow_run_id": tracker.run_id})


def _uri(checkpoint) -> str:
    """Where a checkpoint is, as `Checkpoint(uri)` finds it again: its path, with the object store's
    scheme where it is in one (Ray's `.path` drops it: 'bucket/...', not 's3://bucket/...')."""
    scheme = {"s3": "s3", "gcs": "gs"}.get(checkpoint.filesystem.type_name)
    return f"{scheme}://{checkpoint.path}" if scheme else checkpoint.path


@checked
def tune(config: TuneConfig | dict | str | Path, console: Console | None = None) -> TuneResult:
    """Run the search; returns the best parameters and one row per trial (also written as Parquet)."""
    import ray
    from ray import tune as ray_tune

    from safemax_ray.ray.cluster import cluster_has_gpus, connected
    from safemax_ray.ray.run import fit_keeping_ctrl_c, outcome_of

    cfg, first, study = _prepare(config)
    console = console or Console(quiet=True)
    results_dir = cfg.results_dir
    storage_path = layout.ray_storage(results_dir, first.ray.storage_path)
    cache_dir = layout.cache_dir(results_dir)
    with connected(cfg.address, _local_cpus(cfg)):
        use_gpu = cluster_has_gpus() if cfg.budget.use_gpu is None else cfg.budget.use_gpu
        concurrency = max_concurrent(cfg, ray.cluster_resources(), use_gpu)
        parent = _study_tracker(cfg, study)
        trainable = ray_tune.with_parameters(
            _trial,
            tune_cfg=to_dict(cfg),
            use_gpu=use_gpu,
            cache_dir=cache_dir,
            storage_path=storage_path,
            parent=parent,
        )
        console.log(
            f"study {cfg.study}: {cfg.budget.num_samples} trials, {concurrency} at a time, "
            f"{cfg.budget.workers_per_trial} workers each ({'GPU' if use_gpu else 'CPU'})"
        )
        with parent.failing_on_error():
            grid = fit_keeping_ctrl_c(_tuner(cfg, trainable, concurrency, study, storage_path))
            parent.end_children("KILLED")  # trials Tune stopped early never closed their runs
            finished = [r for r in grid if outcome_of(r).status is Status.FINISHED]
            if not finished:
                errors = [str(r.error) for r in grid if r.error is not None]
                raise SafemaxError(f"no trial of study {cfg.study} finished; first error: {errors[:1]}")
            rejudged = _rejudge(cfg, finished, use_gpu, cache_dir) if cfg.screen else {}
            study_dir = storage.join(layout.studies_dir(results_dir), study)
            result = _record(cfg, finished, grid, results_dir, study_dir, use_gpu, console, rejudged, parent)
        parent.finish(result.best_metrics, (result.best_config_path,))
        return result


def _prepare(config: TuneConfig | dict | str | Path) -> tuple[TuneConfig, UnlearnConfig, str]:
    """The study's config, checked, with the paths preflight made absolute (trials run elsewhere); its
    first trial's run; and the study's name for this time: '<study>-<UTC time>-<4 hex>'."""
    if isinstance(config, (str, Path)):
        config = load_tune_config(config)
    else:
        config = from_dict(TuneConfig, config)
        config.validate()
    first = preflight(config.trial_config(config.first_point()))
    cfg = replace(config, results_dir=first.results_dir, run={**config.run, **_paths(first)})
    cfg.tracking_uri = first.tracking_uri  # absolute, or the environment's, for the trials elsewhere
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return cfg, first, f"{cfg.study}-{stamp}-{uuid.uuid4().hex[:4]}"


def _tuner(cfg: TuneConfig, trainable, concurrency: int, study: str, storage_path: str):
    """The Ray Tune study: Optuna's suggestions, at most `concurrency` at once, ASHA where asked."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if cfg.asha.enabled:
        scheduler = ASHAScheduler(
            time_attr="step",
            max_t=_max_iterations(cfg),
            grace_period=cfg.asha.grace_period,
            reduction_factor=cfg.asha.reduction_factor,
        )
    return ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(
            search_alg=ray_tune.search.ConcurrencyLimiter(searcher(cfg), max_concurrent=concurrency),
            scheduler=scheduler,
            num_samples=cfg.budget.num_samples,
            # The searcher gets metric/mode already; Tune needs them only for the scheduler.
            metric="score" if scheduler else None,
            mode="max" if scheduler else None,
            # A trial's actor imports torch, diffusers and the judge's code: the next trial reuses it.
            reuse_actors=True,
        ),
        run_config=ray_tune.RunConfig(name=study, storage_path=storage_path, verbose=0),
    )


def _study_tracker(cfg: TuneConfig, name: str) -> Tracker:
    """The study's MLflow parent run (none without a tracking URI), with what the study searches."""
    search = {name: to_dict(spec) for name, spec in cfg.search.items()}
    params = {"objective": cfg.objective, "num_samples": cfg.budget.num_samples, "forget_class": cfg.forget_class}
    params |= {"method": cfg.run.get("method", "safemax"), "search": search, "screen": cfg.screen is not None}
    return Tracker.start(tracking_uri(cfg.tracking_uri), cfg.study, name, params)


def _rejudge(cfg: TuneConfig, finished, use_gpu: bool, cache_dir: str) -> dict[int, dict[str, Any]]:
    """The best `screen.rejudge` trials by screen score judged again with the full evaluation, on the
    cluster: their position in `finished` -> their metrics."""
    from ray.train import Checkpoint

    from safemax_ray.ray.evaluation import evaluate_checkpoint

    ranked = sorted(range(len(finished)), key=lambda i: finished[i].metrics["score"], reverse=True)
    out = {}
    for i in ranked[: cfg.screen.rejudge]:
        full = cfg.trial_config({k: finished[i].config[k] for k in cfg.search})
        checkpoint = Checkpoint(finished[i].metrics["checkpoint_path"])
        out[i] = evaluate_checkpoint(workload_for(full), checkpoint, dict(finished[i].metrics), use_gpu, cache_dir)
    return out


def rank_agreement(screen: list[float], full: list[float]) -> float:
    """Spearman's rho between two judgements' scores of the same trials (nan where one is constant)."""
    from scipy.stats import spearmanr

    return float(spearmanr(screen, full).statistic)


def _screen_agreement(finished, rejudged: dict[int, dict[str, Any]], console: Console) -> float | None:
    """Spearman's rho of the re-judged trials' screen and full scores (None without a screen), logged."""
    if not rejudged:
        return None
    screen = [finished[i].metrics["score"] for i in rejudged]
    agreement = rank_agreement(screen, [m["score"] for m in rejudged.values()])
    console.log(f"screen vs full judgement on the {len(rejudged)} re-judged trials: Spearman rho {agreement:.2f}")
    return agreement


def _paths(cfg: UnlearnConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("model", "classifier", "data_root") if getattr(cfg, k)}


def _max_iterations(cfg: TuneConfig) -> int:
    spec = cfg.search.get("iterations")
    if spec is None:
        return cfg.trial_config({}).iterations
    return int(max(spec.choices) if spec.choices is not None else spec.high)


def _local_cpus(cfg: TuneConfig) -> int:
    """Logical CPUs for a local Ray: at least one full trial."""
    return max(4, math.ceil(cfg.budget.cpus_per_trial))


def _best(cfg: TuneConfig, rows: list[dict[str, Any]], rejudged: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The highest score: in pareto mode among the rows on the front; with a screen, among the re-judged."""
    candidates = [r for r in rows if r["pareto"]] if cfg.objective == "pareto" else rows
    if rejudged:
        candidates = [rows[i] for i in rejudged]
    return max(candidates, key=lambda r: r["score"])


def _record(
    cfg: TuneConfig,
    finished,
    grid,
    results_dir: str,
    study_dir: str,
    use_gpu: bool,
    console: Console,
    rejudged: dict[int, dict[str, Any]],
    parent: Tracker,
) -> TuneResult:
    """One Parquet row per finished trial (a re-judged trial's with its full judgement), the Pareto
    flags, the screen's rank agreement, and the best config as YAML."""
    from ray.train import Checkpoint

    from safemax_ray.ray.run import outcome_of

    judged = [rejudged.get(i, r.metrics) for i, r in enumerate(finished)]
    points = [[m[name] for name, _ in PARETO_OBJECTIVES] for m in judged]
    front = pareto_mask(points, [d for _, d in PARETO_OBJECTIVES])
    rows = []
    for i, (result, metrics, on_front) in enumerate(zip(finished, judged, front, strict=True)):
        params = {k: result.config[k] for k in cfg.search}
        trial_id = result.metrics.get("trial_id") or Path(result.path).name
        run_id = f"{cfg.study}-{trial_id}"
        outcome = Outcome(Status.FINISHED, metrics, Checkpoint(result.metrics["checkpoint_path"]))
        row, _ = finish_run(
            cfg.trial_config(params, screened=i not in rejudged),
            outcome,
            run_id,
            storage.join(layout.models_dir(results_dir), run_id),
            "cuda" if use_gpu else "cpu",
            Tracker(parent.uri, result.metrics.get("mlflow_run_id")),
            trial_id=trial_id,
            score=float(metrics["score"]),
            pareto=bool(on_front),
        )
        rows.append({**row, "params": params})
    agreement = _screen_agreement(finished, rejudged, console)
    best = _best(cfg, rows, rejudged)
    best_path = storage.join(study_dir, "best_config.yaml")
    storage.write_bytes_atomic(
        best_path, yaml.safe_dump(to_dict(cfg.trial_config(best["params"])), sort_keys=False).encode()
    )
    kept = {id(r) for r in finished}
    stopped = {Path(r.path).name: outcome_of(r).reason for r in grid if id(r) not in kept}
    for trial, why in stopped.items():
        console.log(f"[yellow]trial {trial} has no row: {why}[/]")
    return TuneResult(
        cfg.study,
        best["params"],
        {k: best[k] for k in ("ua", "entropy", "fid", "retain_acc", "score")},
        best_path,
        rows,
        results_dir,
        stopped,
        agreement,
    )
