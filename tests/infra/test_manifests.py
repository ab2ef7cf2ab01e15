"""Static checks of infra/: every manifest parses and has what its engine requires.

Each check uses the engine's own loader or a published schema where a package ships one:
- RayCluster: the fields the ray.io/v1 CRD marks required (KubeRay `raycluster_types.go`) and
  the operator's own spec validation rules (`validation.go`), checked here explicitly; the pod
  templates inside it against the Kubernetes PodTemplateSpec schema (kubernetes-validate,
  strict: unknown fields fail); rayStartParams through Ray's own `ray start` option parser.
- Kubernetes objects (Deployment, PVC): kubernetes-validate, strict.
- `ray up` config: Ray's `prepare_config` + `validate_config` (ray/autoscaler/ray-schema.json),
  the same calls `ray up` makes; its `ray start` lines through Ray's option parser.
- compose.yaml: the Compose Specification schema vendored by check-jsonschema.
- prefect.yaml: Prefect's own `prefect deploy` models and loader, its schedule conversion, the
  flows loaded from their entrypoints and the parameters checked against their schemas.
- Dockerfile: parsed here; its pins compared with pyproject.toml and the README.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_VERSION = "1.33"  # oldest Kubernetes we document; schemas of newer ones are supersets
IMAGE_REPO = "horse-render"

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REQUIREMENTS = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
DEFAULTS = yaml.safe_load((ROOT / "configs" / "defaults.yaml").read_text())
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|AUTH", re.I)


def load_yaml(relpath: str) -> dict:
    return yaml.safe_load((INFRA / relpath).read_text())


def quantity_bytes(value: str | int) -> int:
    """Kubernetes quantity (Gi, Mi, G, plain bytes) -> bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", str(value))
    assert match, f"not a memory quantity: {value!r}"
    return int(float(match[1]) * units.get(match[2] or "", 1))


def shm_size_bytes(value: str) -> int:
    """docker --shm-size / compose shm_size (16g, 2gb, 512m) -> bytes."""
    match = re.fullmatch(r"(\d+)([kmg])b?", value.lower())
    assert match, f"not a docker size: {value!r}"
    return int(match[1]) * {"k": 2**10, "m": 2**20, "g": 2**30}[match[2]]


def parse_ray_start(args: list[str]) -> dict:
    """Parse `ray start` arguments with Ray's own click command (unknown or mistyped flags fail)."""
    from ray.scripts.scripts import start

    return start.make_context("start", list(args)).params


def ray_start_params_to_args(params: dict[str, str]) -> list[str]:
    """How KubeRay turns rayStartParams into `ray start` flags: --key=value."""
    return [f"--{key}={value}" for key, value in params.items()]


def k8s_validate(obj: dict) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the published Kubernetes schemas) is not installed"
    )
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # make the path readable in the failure
        pytest.fail(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {'/'.join(map(str, exc.absolute_path))}: {exc.message}")


def all_images() -> dict[str, str]:
    """Every container image named in infra/, keyed by where it is."""
    images = {}
    cluster = load_yaml("kuberay/raycluster.yaml")
    groups = [("head", cluster["spec"]["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["spec"]["workerGroupSpecs"]]
    for name, group in groups:
        for container in group["template"]["spec"]["containers"]:
            images[f"raycluster/{name}/{container['name']}"] = container["image"]
    for container in load_yaml("kuberay/prefect-worker.yaml")["spec"]["template"]["spec"]["containers"]:
        images[f"prefect-worker/{container['name']}"] = container["image"]
    images["ray-up"] = load_yaml("ray/cluster.yaml")["docker"]["image"]
    for name, service in load_yaml("prefect/compose.yaml")["services"].items():
        if "build" in service:
            images[f"compose/{name}"] = service["image"]
        elif service["image"].split("/")[-1].startswith(IMAGE_REPO):
            images[f"compose/{name}"] = service["image"]
    return images


# ---- every file ---------------------------------------------------------------------------


def test_every_manifest_parses():
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})
    assert len(files) >= 5, files
    for path in files:
        text = path.read_text()
        docs = list(yaml.safe_load_all(text)) if path.suffix != ".json" else [json.loads(text)]
        assert docs and all(isinstance(d, dict) and d for d in docs), f"{path}: empty or not a mapping"


def test_one_render_image_everywhere_tagged_with_the_project_version():
    images = all_images()
    version = PYPROJECT["project"]["version"]
    assert {ref.rsplit(":", 1)[0].split("/")[-1] for ref in images.values()} == {IMAGE_REPO}, images
    assert {ref.rsplit(":", 1)[1] for ref in images.values()} == {version}, images
    assert len(set(images.values())) == 1, f"the driver and the actors must run the same image: {images}"


# ---- KubeRay --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load_yaml("kuberay/raycluster.yaml")


def test_raycluster_has_the_fields_the_crd_requires(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    name = raycluster["metadata"]["name"]
    # KubeRay ValidateRayClusterMetadata: a DNS-1035 label (services are named after it).
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    spec = raycluster["spec"]
    head = spec["headGroupSpec"]  # required
    for field in ("rayStartParams", "template"):
        assert field in head, f"headGroupSpec.{field} is required"
    assert spec["workerGroupSpecs"], "no worker group"
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)), "worker group names must be unique"
    for group in spec["workerGroupSpecs"]:
        for field in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert field in group, f"workerGroupSpecs[{group.get('groupName')}].{field} is required"
    for group in [head, *spec["workerGroupSpecs"]]:
        params = group["rayStartParams"]
        # CRD type map[string]string: a bare YAML number here is rejected by the API server.
        assert all(isinstance(v, str) for v in params.values()), f"rayStartParams values must be strings: {params}"
        assert group["template"]["spec"]["containers"], "at least one container (KubeRay validation)"
    assert isinstance(spec["rayVersion"], str)
    if "autoscalerOptions" in spec:
        assert spec["autoscalerOptions"].get("upscalingMode", "Default") in {"Default", "Aggressive", "Conservative"}


def test_raycluster_pod_templates_match_the_kubernetes_schema(raycluster):
    spec = raycluster["spec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"horse-{name}"}, "template": group["template"]})


def test_raycluster_ray_start_params_are_ray_start_options(raycluster):
    from ray._private.label_utils import parse_node_labels_string, validate_node_labels

    head = raycluster["spec"]["headGroupSpec"]["rayStartParams"]
    parse_ray_start(["--head", *ray_start_params_to_args(head)])
    for group in raycluster["spec"]["workerGroupSpecs"]:
        params = group["rayStartParams"]
        parse_ray_start(["--address=horse-head-svc:6379", *ray_start_params_to_args(params)])
        if "labels" in params:
            validate_node_labels(parse_node_labels_string(params["labels"]))


def test_raycluster_head_is_cpu_only_and_gpu_workers_autoscale_one_actor_per_gpu(raycluster):
    spec = raycluster["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    for container in head["template"]["spec"]["containers"]:
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container.get("resources", {}).get(section, {})
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        lo, hi = group["minReplicas"], group["maxReplicas"]
        assert 0 <= lo <= group.get("replicas", lo) <= hi and hi >= 1, group["groupName"]
        ray_container = group["template"]["spec"]["containers"][0]
        gpus = ray_container["resources"]["limits"]["nvidia.com/gpu"]
        # Ray must see exactly the GPUs Kubernetes gave the pod; the pool puts one actor on each.
        assert int(group["rayStartParams"]["num-gpus"]) == int(gpus) >= 1
        # Node label for the GPU type (NVIDIA GPU feature discovery).
        assert group["template"]["spec"]["nodeSelector"].get("nvidia.com/gpu.product")


def test_raycluster_shm_holds_the_object_store_and_checkpoints_are_mounted_read_only(raycluster):
    spec = raycluster["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm, "Ray's object store needs /dev/shm larger than Docker's 64 MB default"
        empty_dir = volumes[shm[0]["name"]]["emptyDir"]
        assert empty_dir["medium"] == "Memory"
        store = int(group["rayStartParams"]["object-store-memory"])
        assert quantity_bytes(empty_dir["sizeLimit"]) > store
        assert store < quantity_bytes(container["resources"]["limits"]["memory"]) // 2
        for mount in container["volumeMounts"]:
            if mount["mountPath"] == "/models":
                assert mount.get("readOnly") is True
                assert volumes[mount["name"]]["persistentVolumeClaim"].get("readOnly") is True
    gpu_mounts = [m["mountPath"] for g in spec["workerGroupSpecs"] for m in g["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert "/models" in gpu_mounts, "GPU workers need the checkpoints"


def test_raycluster_ray_version_matches_the_project(raycluster):
    import ray

    version = Version(raycluster["spec"]["rayVersion"])
    assert version in REQUIREMENTS["ray"].specifier
    # The Prefect worker's driver and the cluster must run the same Ray.
    assert (version.major, version.minor) == (Version(ray.__version__).major, Version(ray.__version__).minor)


def test_kubernetes_objects_match_the_kubernetes_schema(raycluster):
    claim = load_yaml("kuberay/checkpoints.yaml")
    k8s_validate(claim)
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for g in raycluster["spec"]["workerGroupSpecs"]
        for v in g["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {claim["metadata"]["name"]}
    k8s_validate(load_yaml("kuberay/prefect-worker.yaml"))


def test_kubernetes_prefect_worker_joins_the_raycluster_without_gpus(raycluster):
    deployment = load_yaml("kuberay/prefect-worker.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_HEAD_ADDRESS"] == f"{raycluster['metadata']['name']}-head-svc:6379"
    assert env["HORSE_WORK_POOL"] == DEFAULTS["prefect"]["work_pool"]
    assert "horse-prefect-worker" in container["command"]
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in container["resources"].get(section, {})
    assert deployment["spec"]["replicas"] == 1


def test_no_literal_secrets_in_kubernetes_manifests():
    for relpath in ("kuberay/raycluster.yaml", "kuberay/prefect-worker.yaml"):
        text = (INFRA / relpath).read_text()
        for doc in yaml.safe_load_all(text):
            for env in _walk_env(doc):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{relpath}: {env['name']} must come from a Secret (valueFrom/envFrom)"


def _walk_env(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from value
            else:
                yield from _walk_env(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_env(item)


# ---- ray up ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_up_config() -> dict:
    return load_yaml("ray/cluster.yaml")


def test_ray_up_config_passes_rays_own_validation(ray_up_config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(ray_up_config)  # what `ray up` does first (local provider checks)
    validate_config(prepared)  # jsonschema against ray/autoscaler/ray-schema.json + Ray's rules
    node_type = prepared["available_node_types"]["local.cluster.node"]
    assert node_type["min_workers"] == node_type["max_workers"] == len(ray_up_config["provider"]["worker_ips"])


def _ray_start_args(commands: list[str]) -> list[list[str]]:
    found = []
    for command in commands:
        for part in command.split(";"):
            words = shlex.split(part)
            if words[:2] == ["ray", "start"]:
                found.append(words[2:])
    return found


def test_ray_up_start_commands_parse_and_size_shm(ray_up_config):
    head = _ray_start_args(ray_up_config["head_start_ray_commands"])
    workers = _ray_start_args(ray_up_config["worker_start_ray_commands"])
    assert len(head) == len(workers) == 1
    head_params = parse_ray_start(head[0])
    worker_params = parse_ray_start(workers[0])
    assert head_params["head"] and head_params["num_gpus"] == 0, "the head renders nothing"
    assert worker_params["address"] == "$RAY_HEAD_IP:6379"
    options = " ".join(ray_up_config["docker"]["run_options"])
    shm = shm_size_bytes(re.search(r"--shm-size[= ](\S+)", options)[1])
    assert shm > max(head_params["object_store_memory"], worker_params["object_store_memory"])
    assert re.search(r"-v \S+:/models:ro\b", options), "checkpoints mounted read-only at /models"
    assert "--gpus all" in options


# ---- Prefect: compose -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml("prefect/compose.yaml")


def test_compose_file_matches_the_compose_spec(compose):
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (vendors the Compose Specification schema) is not installed")
    import jsonschema
    from importlib.resources import files

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft the schema declares
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_runs_prefect_on_postgres_bound_to_loopback(compose):
    services = compose["services"]
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert Version(server["image"].split(":")[1].split("-")[0]) in REQUIREMENTS["prefect"].specifier
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) or "://" in str(value) and "@" in str(value):
                # Only ${VAR} references: the secret itself lives in the caller's environment / .env.
                assert re.search(r"\$\{[A-Z_]+", str(value)), f"{name}.{key} holds a literal secret"
                for credential in re.findall(r"//[^:/]+:([^@]+)@", str(value)):
                    assert credential.startswith("${"), f"{name}.{key} has a literal password"


def test_compose_worker_joins_ray_as_a_zero_resource_node(compose):
    worker = compose["services"]["horse-worker"]
    assert worker["command"] == ["horse-prefect-worker"]
    assert worker["network_mode"] == "host", "Ray nodes must reach each other directly"
    assert worker["environment"]["HORSE_WORK_POOL"] == DEFAULTS["prefect"]["work_pool"]
    assert worker["build"]["dockerfile"] == "infra/docker/Dockerfile"
    assert (INFRA / "prefect" / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve().is_file()


def test_worker_script_joins_with_zero_cpus_and_gpus_then_starts_the_pool_worker():
    script = INFRA / "prefect" / "horse-prefect-worker.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = _logical_lines(script.read_text())
    ray_lines = [shlex.split(line) for line in lines if line.startswith("ray start")]
    assert len(ray_lines) == 1
    # Shell defaults (${VAR:-value}) stand in for the environment.
    params = parse_ray_start([re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in ray_lines[0][2:]])
    assert params["num_cpus"] == 0 and params["num_gpus"] == 0
    assert not params["head"]
    assert any(line.startswith("export HORSE_RAY__ADDRESS=auto") for line in lines)
    worker = [line for line in lines if line.startswith("prefect worker start")]
    assert worker and "--pool" in worker[0] and "--type process" in worker[0]
    assert f'pool="${{HORSE_WORK_POOL:-{DEFAULTS["prefect"]["work_pool"]}}}"' in lines
    concurrency = [line for line in lines if line.startswith("prefect work-pool set-concurrency-limit")]
    assert concurrency and concurrency[0].endswith(f'"${{HORSE_POOL_CONCURRENCY:-{DEFAULTS["prefect"]["concurrency_limit"]}}}"')


def _logical_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


# ---- Prefect: prefect.yaml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return load_yaml("prefect/prefect.yaml")


def test_prefect_yaml_loads_with_prefects_deploy_loader(prefect_yaml):
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._models import PrefectYamlModel
    from rich.console import Console

    PrefectYamlModel.model_validate(prefect_yaml)  # raises on a malformed file
    out = io.StringIO()
    configs, actions = _load_deploy_configs_and_actions(INFRA / "prefect" / "prefect.yaml", console=Console(file=out))
    assert not out.getvalue(), out.getvalue()  # the loader reports problems by printing them
    assert [c["name"] for c in configs] == ["nightly", "backfill"]
    assert actions["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $HORSE_HOME }}"}}]
    import prefect

    assert Version(prefect_yaml["prefect-version"]) in REQUIREMENTS["prefect"].specifier
    assert Version(prefect_yaml["prefect-version"]).major == Version(prefect.__version__).major


def test_prefect_schedules_concurrency_and_pool(prefect_yaml):
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import CronSchedule

    by_name = {d["name"]: d for d in prefect_yaml["deployments"]}
    nightly_schedules = [_schedule_config_to_deployment_schedule(s) for s in by_name["nightly"]["schedules"]]
    assert len(nightly_schedules) == 1
    schedule = nightly_schedules[0]["schedule"]
    assert isinstance(schedule, CronSchedule)
    # The deployment uses the same schedule as configs/defaults.yaml (what `horse deploy` reads).
    assert (schedule.cron, schedule.timezone) == (DEFAULTS["schedule"]["cron"], DEFAULTS["schedule"]["timezone"])
    assert "schedules" not in by_name["backfill"], "backfills are started by hand"
    for deployment in by_name.values():
        limit = ConcurrencyLimitConfig(**deployment["concurrency_limit"])
        assert limit.limit == DEFAULTS["prefect"]["concurrency_limit"]
        assert deployment["work_pool"]["name"] == DEFAULTS["prefect"]["work_pool"]
        assert deployment["work_pool"]["job_variables"]["env"]["HORSE_RAY__ADDRESS"] == "auto"
        assert deployment["enforce_parameter_schema"] is True


def test_prefect_entrypoints_load_and_parameters_fit_the_flows(prefect_yaml):
    if importlib.util.find_spec("flows.nightly") is None:
        pytest.skip("flows/nightly.py is not in this checkout yet")
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    expected_flow = {"nightly": "nightly-campaign-render", "backfill": "backfill-variants"}
    for deployment in prefect_yaml["deployments"]:
        path, _, func = deployment["entrypoint"].partition(":")
        assert (ROOT / path).is_file(), f"entrypoints are relative to the repo root: {path}"
        flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + func)
        assert flow.name == expected_flow[deployment["name"]]
        schema = parameter_schema(flow).model_dump_for_openapi()
        # What the server does with enforce_parameter_schema: the nightly schedule must be
        # complete; a backfill names its campaign at run time.
        errors = validate(deployment["parameters"], schema, ignore_required=deployment["name"] == "backfill")
        assert not errors, [e.message for e in errors]
        if deployment["name"] == "nightly":
            assert set(schema.get("required", [])) <= set(deployment["parameters"])


# ---- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(INFRA / "docker" / "Dockerfile")


def docker_args(instructions) -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)


def readme_torch_pin() -> str:
    pins = set(re.findall(r"torch==([0-9][0-9.]*[0-9])", (ROOT / "README.md").read_text()))
    assert len(pins) == 1, f"README should pin one torch: {pins}"
    return pins.pop()


def test_dockerfile_base_is_a_cuda_runtime_matching_the_torch_wheels(dockerfile):
    args = docker_args(dockerfile)
    base = next(arg for kind, arg in dockerfile if kind == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+", base)
    assert match, f"base image must be an nvidia/cuda runtime image, got {base}"
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", args["TORCH_INDEX_URL"])
    assert index, args["TORCH_INDEX_URL"]
    assert index[1] == match[1] + match[2], f"torch wheels cu{index[1]} on a CUDA {match[1]}.{match[2]} runtime"


def test_dockerfile_pins_match_pyproject_and_readme(dockerfile):
    args = docker_args(dockerfile)
    assert args["TORCH_VERSION"] == readme_torch_pin()
    assert Version(args["TORCH_VERSION"]) in REQUIREMENTS["torch"].specifier
    python = Version(args["PYTHON_VERSION"])
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])
    runs = [arg for kind, arg in dockerfile if kind == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if 'torch==${TORCH_VERSION}' in run)
    project_step = next(i for i, run in enumerate(runs) if re.search(r"pip install (-q )?(-e )?\.( |$)", run))
    assert torch_step < project_step, "torch must be installed before the project (README)"
    assert "--index-url" in runs[torch_step]


def test_dockerfile_copies_the_project_and_never_checkpoints(dockerfile):
    copies = [arg for kind, arg in dockerfile if kind in {"COPY", "ADD"}]
    assert not [arg for kind, arg in dockerfile if kind == "ADD"], "use COPY (ADD fetches URLs, unpacks archives)"
    sources = []
    for arg in copies:
        words = [w for w in arg.split() if not w.startswith("--")]
        sources += words[:-1]
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    copied_dirs = {s.rstrip("/") for s in sources}
    assert {p.rstrip("*") for p in packages} <= copied_dirs, "every package pyproject builds is copied"
    assert {"pyproject.toml", "configs"} <= copied_dirs
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repo"
        assert not re.search(r"(^|/)models(/|$)|checkpoint|weights|\.(safetensors|ckpt|pt|pth|bin)$", source), source
    volumes = " ".join(arg for kind, arg in dockerfile if kind == "VOLUME")
    assert "/models" in volumes, "checkpoints are a mounted volume"
    ignore = [line.strip() for line in (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "**/*.safetensors" in ignore, "the build context is an allow-list without weights"
    for source in sources:
        assert f"!{source}" in ignore or f"!{source.rstrip('/')}/" in ignore, f"{source} is not in the context allow-list"
