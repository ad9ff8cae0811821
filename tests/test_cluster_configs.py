"""Static checks of the deployment files under cluster/: they parse, have the shape the tools
expect, run the same Ray version as pyproject.toml, give GPU workers GPUs, share the results
volume, and run the right command.

Nothing here talks to a cloud or a Kubernetes API; these catch the drift that otherwise only
shows up when a cluster fails to start (a Ray bump in pyproject.toml that the image tags or
`rayVersion` fields missed, a worker group that lost its GPU, a RayCronJob whose jobTemplate
got a stray `spec:` wrapper).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"

EXPECTED_FILES = [
    "Dockerfile",
    "README.md",
    "aws.yaml",
    "gcp.yaml",
    "kuberay/pvc.yaml",
    "kuberay/raycluster.yaml",
    "kuberay/rayjob.yaml",
    "kuberay/raycronjob.yaml",
    "kuberay/networkpolicy.yaml",
]
RESULTS_PVC = "safemax-results"
RESULTS_MOUNT = "/results"
AWS_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5")
VERSION_CHARS = r"[0-9A-Za-z.+-]*[0-9A-Za-z]"


# --------------------------------------------------------------------------------------------
# helpers


def pinned_ray_version() -> str:
    """The exact Ray version pinned in pyproject.toml (`ray[...]==X`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = []
    for dep in project["dependencies"]:
        m = re.fullmatch(r"\s*ray\s*(?:\[[^\]]*\])?\s*==\s*(" + VERSION_CHARS + r")\s*", dep)
        if m:
            pins.append(m.group(1))
    assert len(pins) == 1, f"expected exactly one `ray[...]==X` pin in pyproject.toml, found {pins}"
    return pins[0]


RAY_VERSION = pinned_ray_version()


def yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} has no YAML documents"
    for d in docs:
        assert isinstance(d, dict), f"{path}: top-level document is {type(d).__name__}, not a mapping"
    return docs


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one document, found {len(docs)}"
    return docs[0]


# Every way a Ray version can be written in these files. Each pattern's group 1 is the version.
VERSION_PATTERNS = {
    # (?<![-\w.]) so that other packages such as `safemax-ray==0.1.0` are not taken for Ray.
    "ray[extras]== pin": re.compile(r"(?<![-\w.])ray\[[^\]]*\]\s*==\s*(" + VERSION_CHARS + ")"),
    "ray== pin": re.compile(r"(?<![-\w.])ray\s*==\s*(" + VERSION_CHARS + ")"),
    "rayVersion field": re.compile(r"\brayVersion:\s*[\"']?(" + VERSION_CHARS + ")"),
    "rayproject/ray image tag": re.compile(r"rayproject/ray(?:-ml)?:(\d" + VERSION_CHARS + ")"),
    "safemax-ray image tag": re.compile(r"safemax-ray:(\d" + VERSION_CHARS + ")"),
    "Dockerfile ARG": re.compile(r"^\s*ARG\s+RAY_VERSION\s*=\s*(\S+)\s*$", re.MULTILINE),
    "__version__ assert": re.compile(r"ray\.__version__\s*==\s*[\"'](" + VERSION_CHARS + ")[\"']"),
    "prose 'Ray X.Y.Z'": re.compile(r"\bRay\s+v?(\d+\.\d+\.\d+" + r"(?:[.+-][0-9A-Za-z]+)*)"),
}


def ray_version_mentions(text: str) -> list[tuple[str, str, str]]:
    """(kind, matched text, version) for every Ray version written in `text`.

    Image tags may carry a suffix after the version (`2.60.0-py311-gpu`); only the leading
    version (digits and dots, optionally rcN) counts.
    """
    found = []
    for kind, pattern in VERSION_PATTERNS.items():
        for m in pattern.finditer(text):
            version = m.group(1)
            if kind.endswith("image tag"):
                version = re.match(r"\d+(?:\.\d+)*(?:rc\d+)?", version).group(0)
            found.append((kind, m.group(0).strip(), version))
    return found


def version_mismatches(text: str, expected: str) -> list[str]:
    return [f"{kind}: {snippet!r}" for kind, snippet, v in ray_version_mentions(text) if v != expected]


# Where each KubeRay manifest keeps its RayCluster spec.
CLUSTER_SPEC_PATHS = {
    "raycluster.yaml": ("spec",),
    "rayjob.yaml": ("spec", "rayClusterSpec"),
    "raycronjob.yaml": ("spec", "jobTemplate", "rayClusterSpec"),
}


def ray_cluster_spec(name: str) -> dict:
    node = load_one(KUBERAY / name)
    for key in CLUSTER_SPEC_PATHS[name]:
        assert isinstance(node, dict) and key in node, f"{name}: no {'.'.join(CLUSTER_SPEC_PATHS[name])}"
        node = node[key]
    return node


def ray_cluster_specs() -> dict[str, dict]:
    """Every RayCluster spec in the KubeRay manifests, wherever it is nested."""
    return {name: ray_cluster_spec(name) for name in CLUSTER_SPEC_PATHS}


def pod_specs(cluster_spec: dict) -> dict[str, dict]:
    pods = {"head": cluster_spec["headGroupSpec"]["template"]["spec"]}
    for group in cluster_spec["workerGroupSpecs"]:
        pods[f"worker group {group['groupName']}"] = group["template"]["spec"]
    return pods


def gpu_count(resources: dict | None) -> int:
    return int((resources or {}).get("nvidia.com/gpu", 0))


def check_gpu_worker_groups(cluster_spec: dict) -> None:
    """Every worker group asks Kubernetes for a GPU, in requests and limits alike."""
    groups = cluster_spec.get("workerGroupSpecs") or []
    assert groups, "no workerGroupSpecs"
    for group in groups:
        containers = group["template"]["spec"]["containers"]
        gpus = [
            (gpu_count(c.get("resources", {}).get("requests")), gpu_count(c.get("resources", {}).get("limits")))
            for c in containers
        ]
        assert any(req >= 1 and lim >= 1 for req, lim in gpus), (
            f"worker group {group.get('groupName')!r} requests no nvidia.com/gpu (requests, limits per container: {gpus})"
        )
        for req, lim in gpus:
            # Kubernetes rejects extended resources whose request differs from the limit.
            assert req == lim, f"worker group {group.get('groupName')!r}: nvidia.com/gpu request {req} != limit {lim}"


def check_batch_entrypoint(entrypoint: str, gpu_slots: int) -> argparse.Namespace:
    """`safemax-ray batch` over classes 0-9 into the shared volume, sized for the GPU workers.

    `batch` picks GPU use and its concurrency from the resources present when it starts, which on
    an autoscaling cluster is before the workers exist; so the manifests must say --gpu and give
    --max-concurrent as the number of GPU workers the cluster may grow to (`gpu_slots`).
    """
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["safemax-ray", "batch"], f"entrypoint does not run `safemax-ray batch`: {entrypoint!r}"
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--classes")
    p.add_argument("--results-dir")
    p.add_argument("--address")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--cpu", action="store_true")
    args, _ = p.parse_known_args(argv[2:])
    assert args.classes == "0-9", entrypoint
    assert args.address == "auto", entrypoint
    assert args.results_dir == RESULTS_MOUNT, entrypoint
    assert args.gpu and not args.cpu, f"entrypoint must pass --gpu: {entrypoint!r}"
    assert args.max_concurrent == gpu_slots, (
        f"--max-concurrent {args.max_concurrent} != {gpu_slots} GPUs the worker groups can grow to: {entrypoint!r}"
    )
    return args


def gpu_slots(cluster_spec: dict) -> int:
    """GPUs the cluster can have at most: maxReplicas x GPUs per pod, over all worker groups."""
    total = 0
    for group in cluster_spec["workerGroupSpecs"]:
        per_pod = sum(gpu_count(c.get("resources", {}).get("limits")) for c in group["template"]["spec"]["containers"])
        total += group["maxReplicas"] * per_pod
    return total


# --------------------------------------------------------------------------------------------
# the checks can fail: the helpers reject broken inputs


def test_version_scanner_flags_every_kind_of_mismatch():
    text = "\n".join(
        [
            'pip install "ray[train,tune]==2.59.1"',
            "ray==2.59.1",
            'rayVersion: "2.59.1"',
            "image: rayproject/ray:2.59.1-py311-gpu",
            "image: registry.example.com/safemax/safemax-ray:2.59.1",
            "ARG RAY_VERSION=2.59.1",
            "assert ray.__version__ == '2.59.1'",
            "Everything is pinned to Ray 2.59.1.",
        ]
    )
    assert len(version_mismatches(text, "2.60.0")) == len(VERSION_PATTERNS)
    assert version_mismatches(text, "2.59.1") == []
    # Other projects' versions are not Ray versions.
    assert ray_version_mentions("KubeRay 1.6.0, kuberay-operator 1.6.0, pip install safemax-ray==0.1.0") == []


def test_gpu_check_rejects_a_worker_group_without_gpus():
    spec = ray_cluster_spec("raycluster.yaml")
    broken = yaml.safe_load(yaml.safe_dump(spec))
    for c in broken["workerGroupSpecs"][0]["template"]["spec"]["containers"]:
        c["resources"]["requests"].pop("nvidia.com/gpu", None)
        c["resources"]["limits"].pop("nvidia.com/gpu", None)
    with pytest.raises(AssertionError, match="requests no nvidia.com/gpu"):
        check_gpu_worker_groups(broken)


def test_entrypoint_check_rejects_other_commands():
    good = "safemax-ray batch --classes 0-9 --results-dir /results --address auto --gpu --max-concurrent 4"
    check_batch_entrypoint(good, 4)
    for bad in (
        "safemax-ray unlearn --forget-class 0 --results-dir /results --address auto --gpu --max-concurrent 4",
        "python -m safemax_ray.cli batch --classes 0-9 --results-dir /results --address auto --gpu --max-concurrent 4",
        "safemax-ray batch --classes 0-9 --results-dir /tmp/results --address auto --gpu --max-concurrent 4",
        "safemax-ray batch --classes 0-9 --results-dir /results --address auto --max-concurrent 4",
    ):
        with pytest.raises(AssertionError):
            check_batch_entrypoint(bad, 4)
    with pytest.raises(AssertionError, match="max-concurrent"):
        check_batch_entrypoint(good, 8)


# --------------------------------------------------------------------------------------------
# files and parsing


def test_pyproject_pins_an_exact_ray_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", RAY_VERSION), RAY_VERSION


@pytest.mark.parametrize("rel", EXPECTED_FILES)
def test_expected_file_exists(rel):
    assert (CLUSTER / rel).is_file(), f"cluster/{rel} is missing"


def test_every_yaml_under_cluster_is_covered():
    found = {str(p.relative_to(CLUSTER)) for p in yaml_files()}
    expected = {f for f in EXPECTED_FILES if f.endswith(".yaml")}
    assert found == expected, f"unexpected or missing YAML files: {sorted(found ^ expected)}"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses_to_mappings(path):
    load_docs(path)


# --------------------------------------------------------------------------------------------
# Ray version everywhere


@pytest.mark.parametrize(
    "path",
    [CLUSTER / f for f in EXPECTED_FILES],
    ids=EXPECTED_FILES,
)
def test_every_ray_version_mentioned_matches_pyproject(path):
    assert version_mismatches(path.read_text(), RAY_VERSION) == [], (
        f"{path.relative_to(ROOT)} names a Ray version other than {RAY_VERSION} (pyproject.toml)"
    )


@pytest.mark.parametrize(
    ("rel", "kinds"),
    [
        ("Dockerfile", {"Dockerfile ARG"}),
        ("aws.yaml", {"ray[extras]== pin", "safemax-ray image tag"}),
        ("gcp.yaml", {"ray[extras]== pin", "safemax-ray image tag"}),
        ("kuberay/raycluster.yaml", {"rayVersion field", "safemax-ray image tag"}),
        ("kuberay/rayjob.yaml", {"rayVersion field", "safemax-ray image tag"}),
        ("kuberay/raycronjob.yaml", {"rayVersion field", "safemax-ray image tag"}),
    ],
)
def test_files_state_the_ray_version(rel, kinds):
    """The scan above must not pass just because it found nothing."""
    present = {kind for kind, _, _ in ray_version_mentions((CLUSTER / rel).read_text())}
    assert kinds <= present, f"cluster/{rel}: no {sorted(kinds - present)} found"


def test_dockerfile_derives_everything_from_one_ray_version():
    text = (CLUSTER / "Dockerfile").read_text()
    args = re.findall(r"^\s*ARG\s+RAY_VERSION=(\S+)\s*$", text, re.MULTILINE)
    assert args == [RAY_VERSION], f"expected one `ARG RAY_VERSION={RAY_VERSION}`, found {args}"
    froms = re.findall(r"^\s*FROM\s+(\S+)", text, re.MULTILINE)
    assert froms == ["rayproject/ray:${RAY_VERSION}-py311-gpu"], froms
    # The ARG must come before FROM (to be usable there) and be re-declared after it.
    assert text.index("ARG RAY_VERSION=") < text.index("FROM ")
    assert re.search(r"^\s*ARG\s+RAY_VERSION\s*$", text[text.index("FROM ") :], re.MULTILINE)
    assert '"ray[train,tune]==${RAY_VERSION}"' in text, "pip install does not pin ray to ${RAY_VERSION}"
    assert re.search(r"^\s*ENV\s+RAY_USAGE_STATS_ENABLED=0\b", text, re.MULTILINE)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_specs = [d for d in deps if re.match(r"torch\s*[<>=!~]", d)]
    assert len(torch_specs) == 1, torch_specs
    assert f'"{torch_specs[0]}"' in text, f"cluster/Dockerfile does not install pyproject.toml's {torch_specs[0]!r}"


# --------------------------------------------------------------------------------------------
# ray up configs


def launcher_gpu_count(provider: str, node_type: dict) -> int:
    cfg = node_type["node_config"]
    declared = int((node_type.get("resources") or {}).get("GPU", 0))
    if provider == "aws":
        family = cfg["InstanceType"].split(".")[0]
        return max(declared, 1 if family in AWS_GPU_FAMILIES else 0)
    accels = sum(int(a.get("acceleratorCount", 0)) for a in cfg.get("guestAccelerators", []))
    builtin = 1 if cfg.get("machineType", "").split("-")[0] in {"g2", "a2", "a3"} else 0
    return max(declared, accels, builtin)


@pytest.mark.parametrize(("rel", "provider"), [("aws.yaml", "aws"), ("gcp.yaml", "gcp")])
def test_cluster_launcher_config(rel, provider):
    cfg = load_one(CLUSTER / rel)
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type", "docker"):
        assert key in cfg, f"{rel}: missing top-level `{key}`"
    assert cfg["provider"]["type"] == provider
    assert cfg["auth"]["ssh_user"]
    if provider == "gcp":
        assert cfg["provider"]["project_id"], "gcp.yaml: provider.project_id is required"

    image = cfg["docker"]["image"]
    assert re.search(r"/safemax-ray:" + re.escape(RAY_VERSION) + "$", image), f"{rel}: docker.image {image!r}"
    assert cfg["docker"]["container_name"]

    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types, f"{rel}: head_node_type {head!r} is not in available_node_types"
    assert launcher_gpu_count(provider, types[head]) == 0, f"{rel}: the head should be a CPU node"

    workers = {name: t for name, t in types.items() if name != head}
    gpu_workers = {name: t for name, t in workers.items() if launcher_gpu_count(provider, t) >= 1}
    assert gpu_workers, f"{rel}: no GPU worker node type"
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"], (
            f"{rel}: {name} needs 0 <= min_workers <= max_workers <= the cluster's max_workers"
        )
    assert sum(t["max_workers"] for t in gpu_workers.values()) >= 1

    if provider == "gcp":
        # GCP does not auto-detect resources, and GPU VMs must not live-migrate.
        for name, t in types.items():
            assert "CPU" in (t.get("resources") or {}), f"gcp.yaml: {name} must declare its CPUs"
        for name, t in gpu_workers.items():
            assert t["resources"].get("GPU", 0) >= 1, f"gcp.yaml: {name} must declare its GPU"
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"

    pins = [c for c in cfg.get("setup_commands", []) if re.search(r"\bray\[[^\]]*\]==", c)]
    assert pins, f"{rel}: setup_commands do not pin ray[...]==X"
    for c in pins:
        assert f"=={RAY_VERSION}" in c, f"{rel}: {c!r}"

    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    assert isinstance(cfg.get("file_mounts", {}), dict)


@pytest.mark.parametrize("rel", ["aws.yaml", "gcp.yaml"])
def test_cluster_launcher_config_passes_rays_own_schema(rel):
    """What `ray up` itself checks before touching the cloud (no credentials needed for this)."""
    import ray
    from ray.autoscaler._private import util

    assert ray.__version__ == RAY_VERSION, f"installed ray {ray.__version__} != pyproject pin {RAY_VERSION}"
    cfg = load_one(CLUSTER / rel)
    util.validate_config(util.prepare_config(cfg))

    broken = yaml.safe_load(yaml.safe_dump(cfg))
    broken["idle_timeout_minutez"] = 10
    with pytest.raises(Exception, match="idle_timeout_minutez"):
        util.validate_config(util.prepare_config(broken))


# --------------------------------------------------------------------------------------------
# KubeRay manifests


@pytest.mark.parametrize(
    ("rel", "api_version", "kind"),
    [
        ("kuberay/raycluster.yaml", "ray.io/v1", "RayCluster"),
        ("kuberay/rayjob.yaml", "ray.io/v1", "RayJob"),
        ("kuberay/raycronjob.yaml", "ray.io/v1", "RayCronJob"),
        ("kuberay/pvc.yaml", "v1", "PersistentVolumeClaim"),
        ("kuberay/networkpolicy.yaml", "networking.k8s.io/v1", "NetworkPolicy"),
    ],
)
def test_kubernetes_kinds(rel, api_version, kind):
    doc = load_one(CLUSTER / rel)
    assert doc["apiVersion"] == api_version
    assert doc["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]
    assert isinstance(doc["spec"], dict)


def test_results_pvc_is_shared():
    pvc = load_one(KUBERAY / "pvc.yaml")
    assert pvc["metadata"]["name"] == RESULTS_PVC
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes write results at once"
    assert re.fullmatch(r"\d+(Mi|Gi|Ti)", pvc["spec"]["resources"]["requests"]["storage"])


@pytest.mark.parametrize("where", list(CLUSTER_SPEC_PATHS))
def test_ray_cluster_spec(where):
    spec = ray_cluster_spec(where)
    assert str(spec["rayVersion"]) == RAY_VERSION, f"{where}: rayVersion {spec['rayVersion']!r}"
    assert "rayStartParams" in spec["headGroupSpec"]

    check_gpu_worker_groups(spec)
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert "rayStartParams" in group

    for pod_name, pod in pod_specs(spec).items():
        for c in pod["containers"]:
            assert c["image"].endswith(f"/safemax-ray:{RAY_VERSION}"), f"{where} {pod_name}: image {c['image']!r}"
        # The shared results volume, mounted at /results in every Ray pod.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        pvc_volumes = [
            n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == RESULTS_PVC
        ]
        assert pvc_volumes, f"{where} {pod_name}: no volume from PVC {RESULTS_PVC}"
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
        assert any(m["name"] in pvc_volumes and m["mountPath"] == RESULTS_MOUNT for m in mounts), (
            f"{where} {pod_name}: PVC {RESULTS_PVC} not mounted at {RESULTS_MOUNT}"
        )
        for m in mounts:
            assert m["name"] in volumes, f"{where} {pod_name}: mount of undeclared volume {m['name']!r}"


def test_the_three_cluster_specs_agree():
    """RayCluster, RayJob and RayCronJob should run the same cluster; copies drift apart."""
    specs = list(ray_cluster_specs().values())
    assert all(s == specs[0] for s in specs[1:]), "the RayCluster specs in raycluster/rayjob/raycronjob.yaml differ"


def test_rayjob_runs_the_batch_and_cleans_up():
    job = load_one(KUBERAY / "rayjob.yaml")["spec"]
    check_batch_entrypoint(job["entrypoint"], gpu_slots(job["rayClusterSpec"]))
    assert job["shutdownAfterJobFinishes"] is True
    assert "clusterSelector" not in job, "the RayJob should bring its own cluster, not borrow one"


def test_raycronjob_schedules_the_batch_nightly():
    cron = load_one(KUBERAY / "raycronjob.yaml")["spec"]
    # Only the two fields every RayCronJob CRD so far has; kubectl's strict validation rejects
    # the whole object for a field its CRD lacks (spec.suspend arrived late, for instance).
    assert set(cron) == {"schedule", "jobTemplate"}, f"RayCronJob spec fields: {sorted(cron)}"
    assert cron["schedule"] == "0 2 * * *"
    template = cron["jobTemplate"]
    # KubeRay's jobTemplate is a RayJobSpec itself: a `spec:` wrapper would be silently dropped.
    assert "spec" not in template and "entrypoint" in template
    check_batch_entrypoint(template["entrypoint"], gpu_slots(template["rayClusterSpec"]))
    assert template["shutdownAfterJobFinishes"] is True
    deadline = template.get("activeDeadlineSeconds")
    assert deadline is None or 0 < deadline < 24 * 3600, "a nightly run must end before the next one starts"


def test_entrypoints_match_between_rayjob_and_raycronjob():
    job = load_one(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"]
    cron = load_one(KUBERAY / "raycronjob.yaml")["spec"]["jobTemplate"]["entrypoint"]
    assert shlex.split(job) == shlex.split(cron)


def test_entrypoints_parse_with_the_real_cli():
    """The CLI's `batch` flags must accept what the manifests pass."""
    from safemax_ray import cli
    from safemax_ray.cli import flags

    parser = cli.build_parser()
    for rel, entry in [
        ("rayjob.yaml", load_one(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"]),
        ("raycronjob.yaml", load_one(KUBERAY / "raycronjob.yaml")["spec"]["jobTemplate"]["entrypoint"]),
    ]:
        argv = shlex.split(entry)[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits on unknown flags
            pytest.fail(f"{rel}: `safemax-ray {' '.join(argv)}` is rejected by the CLI (exit {exc.code})")
        assert args.command == "batch"
        assert args.classes == "0-9"
        given = flags.overrides(args)
        assert given["results_dir"] == RESULTS_MOUNT
        assert given["ray.address"] == "auto"
        assert given["ray.use_gpu"] is True
        assert args.max_concurrent == 4


# --------------------------------------------------------------------------------------------
# Only the owner gets in: token authentication everywhere, a network policy on Kubernetes

AUTH_SECRET = "safemax-ray-token"
POD_LABEL = ("app.kubernetes.io/name", "safemax-ray")


def has_token_auth(container: dict) -> bool:
    """RAY_AUTH_MODE=token, and the token from the Secret the user creates (never a value in the file)."""
    env = {e["name"]: e for e in container.get("env", [])}
    token = env.get("RAY_AUTH_TOKEN", {})
    return (
        env.get("RAY_AUTH_MODE", {}).get("value") == "token"
        and "value" not in token
        and token.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == AUTH_SECRET
    )


def job_specs() -> dict[str, dict]:
    return {
        "rayjob.yaml": load_one(KUBERAY / "rayjob.yaml")["spec"],
        "raycronjob.yaml": load_one(KUBERAY / "raycronjob.yaml")["spec"]["jobTemplate"],
    }


def labelled_pod_templates() -> dict[str, dict]:
    """Every pod template of the manifests: Ray heads and workers, and the RayJob submitters."""
    templates = {}
    for where, spec in ray_cluster_specs().items():
        templates[f"{where} head"] = spec["headGroupSpec"]["template"]
        for group in spec["workerGroupSpecs"]:
            templates[f"{where} {group['groupName']}"] = group["template"]
    for where, job in job_specs().items():
        templates[f"{where} submitter"] = job["submitterPodTemplate"]
    return templates


def test_every_kuberay_pod_runs_with_the_token_and_the_policy_label():
    for where, template in labelled_pod_templates().items():
        assert template["metadata"]["labels"].get(POD_LABEL[0]) == POD_LABEL[1], f"{where}: no {POD_LABEL} label"
        for c in template["spec"]["containers"]:
            assert has_token_auth(c), f"{where} {c['name']}: not RAY_AUTH_MODE=token with the {AUTH_SECRET} Secret"


def test_the_token_check_rejects_a_token_written_into_the_file():
    written = {"env": [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "value": "abc"}]}
    assert not has_token_auth(written)
    assert not has_token_auth({"env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}]})


@pytest.mark.parametrize("rel", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs_start_ray_with_the_users_token(rel):
    cfg = load_one(CLUSTER / rel)
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}, f"{rel}: the token is not copied"
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    assert not any("0.0.0.0" in c for c in starts), f"{rel}: the dashboard must not listen on every interface"
    assert any("~/.ray/auth_token" in c for c in cfg["setup_commands"]), f"{rel}: no check that the token exists"


def test_no_file_under_cluster_holds_a_token():
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"RAY_AUTH_TOKEN=(?!\$\()\S", text), f"{path}: a token value"
            assert not re.search(r"name: RAY_AUTH_TOKEN\s*\n\s*value:", text), f"{path}: a token value"


def test_the_network_policy_admits_only_the_cluster_and_the_operator():
    policy = load_one(KUBERAY / "networkpolicy.yaml")["spec"]
    assert policy["podSelector"]["matchLabels"] == dict([POD_LABEL])
    assert policy["policyTypes"] == ["Ingress"]
    rules = policy["ingress"]
    # A rule without `from` admits every source: none may exist.
    assert all(rule.get("from") for rule in rules), rules
    own, operator = rules
    assert own["from"] == [{"podSelector": {"matchLabels": dict([POD_LABEL])}}] and "ports" not in own
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert [p["port"] for p in operator["ports"]] == [8265]


# --------------------------------------------------------------------------------------------
# README


def test_readme_covers_every_config_and_the_commands():
    readme = (CLUSTER / "README.md").read_text()
    for rel in EXPECTED_FILES:
        if rel != "README.md":
            assert Path(rel).name in readme, f"cluster/README.md never mentions {rel}"
    for needle in (
        "docker build -f cluster/Dockerfile",
        "ray up cluster/aws.yaml",
        "ray job submit --address http://",
        "safemax-ray tune --config tune_configs/cifar10.yaml --address auto",
        "ray down cluster/aws.yaml",
        "kubectl apply -f cluster/kuberay/pvc.yaml",
        "kubectl create secret generic safemax-ray-token",
        "kubectl apply -f cluster/kuberay/networkpolicy.yaml",
        "ray get-auth-token --generate",
        "export RAY_AUTH_MODE=token",
        "kubectl apply -f cluster/kuberay/raycronjob.yaml",
        "safemax-ray report /results",
        "s3://",
        "gs://",
        "RayCronJob=true",
    ):
        assert needle in readme, f"cluster/README.md lacks {needle!r}"
