"""The Kubernetes manifests (deploy/kubernetes): every overlay rendered with `kubectl kustomize`, validated
with kubernetes-validate against several Kubernetes versions, then read for what a schema cannot see: the
drain arithmetic, probes, references between objects, the app's settings, and where nginx finds the studio.

Each check is a function from a render to a list of problems; a table of mutations proves that each one
fails on the render it should refuse. kubectl (Kustomize inside) and kubernetes-validate come from
scripts/install_tools.sh (pinned wheels in .venv-tools); a missing tool fails the test, as in
test_deploy_files.py.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from app.transport.worker import DRAIN_MARGIN
from tests.procs import tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# What kubernetes-validate 1.37 bundles for the versions still supported by their vendors.
KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0")
# Custom resources: no schema in kubernetes-validate, so only a warning for these (and only these) kinds.
CRD_KINDS = {"HTTPRoute", "ScaledObject", "PodMonitor"}
# gunicorn's exit after the drain, nginx's stop, and slack for a slow node.
GRACE_MARGIN_SECONDS = 15
# The app's S3 and Redis settings (issue 20's interface), accepted before app/settings.py has them all.
PLANNED_SETTINGS = {
    "GATEWAY_S3_BUCKET",
    "GATEWAY_S3_ENDPOINT",
    "GATEWAY_S3_REGION",
    "GATEWAY_S3_ACCESS_KEY_ID",
    "GATEWAY_S3_SECRET_ACCESS_KEY",
    "GATEWAY_S3_PREFIX",
    "GATEWAY_S3_URL_SECONDS",
    "GATEWAY_REDIS_URL",
    "GATEWAY_GLOBAL_MAX_GENERATIONS",
    "GATEWAY_GLOBAL_SLOT_TTL_SECONDS",
    "GATEWAY_GLOBAL_LIMIT_ON_REDIS_DOWN",
}
# The app's settings, and what gunicorn.conf.py reads (workers, binds, drain).
GUNICORN_SETTINGS = set(
    re.findall(r"""_env\(["'](GATEWAY_[A-Z0-9_]+)""", (ROOT / "gunicorn.conf.py").read_text())
)
SETTINGS = (
    {f"GATEWAY_{name.upper()}" for name in Settings.model_fields} | GUNICORN_SETTINGS | PLANNED_SETTINGS
)
# The only variables the nginx image's envsubst touches are defined names, all upper case.
TEMPLATE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
NGINX_FILES = {
    "nginx.conf": ROOT / "nginx" / "nginx.conf",
    "gateway.conf.template": ROOT / "nginx" / "templates" / "gateway.conf.template",
}
APP, NGINX = "gateway", "nginx"


@dataclass
class Render:
    overlay: str
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((d for d in self.all(kind) if d["metadata"]["name"] == name), None)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.named("Deployment", "metagpt-gateway") or {}

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]

    def container(self, name: str, init: bool = False) -> dict[str, Any] | None:
        key = "initContainers" if init else "containers"
        return next((c for c in self.pod["spec"].get(key, []) if c["name"] == name), None)

    @property
    def app(self) -> dict[str, Any]:
        app = self.container(APP)
        assert app is not None, f"{self.overlay}: no container {APP!r}"
        return app

    def env(self, container: dict[str, Any]) -> dict[str, str | None]:
        """The container's environment as Kubernetes builds it (envFrom first, env over it); a value
        from a missing object or key is None."""
        values: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    obj = self.named(kind, source[key]["name"]) or {}
                    values.update(self.data(obj))
        for var in container.get("env", []):
            if "value" in var:
                values[var["name"]] = var["value"]
                continue
            ref = var.get("valueFrom", {})
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in ref:
                    obj = self.named(kind, ref[key]["name"]) or {}
                    values[var["name"]] = self.data(obj).get(ref[key]["key"])
        return values

    @staticmethod
    def data(obj: dict[str, Any]) -> dict[str, str]:
        data = dict(obj.get("data") or {})
        if obj.get("kind") == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data | dict(obj.get("stringData") or {})


# The checks: each returns what is wrong with a render, [] when nothing is.


def native_sidecar(r: Render) -> list[str]:
    nginx = r.container(NGINX, init=True)
    if nginx is None or r.container(NGINX) is not None:
        return ["nginx must be an init container (and not a plain one): it must stop after the app"]
    if nginx.get("restartPolicy") != "Always":
        return ["the nginx init container needs restartPolicy: Always (a native sidecar)"]
    return []


def prestop_seconds(r: Render) -> int:
    pre_stop = r.app.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return int(command[-1]) if command[:1] == ["sleep"] else 0


def grace_covers_drain(r: Render) -> list[str]:
    env = r.env(r.app)
    if not (env.get("GATEWAY_GRACEFUL_TIMEOUT") or "").isdigit():
        return ["GATEWAY_GRACEFUL_TIMEOUT must be set on the app container (the grace period follows it)"]
    pre_stop, drain = prestop_seconds(r), int(env["GATEWAY_GRACEFUL_TIMEOUT"] or 0)
    grace = r.pod["spec"].get("terminationGracePeriodSeconds", 30)
    problems = [] if pre_stop >= 5 else [f"preStop sleeps {pre_stop} s: endpoints need a few seconds to go"]
    if grace < pre_stop + drain + GRACE_MARGIN_SECONDS:
        problems.append(f"grace {grace} s < preStop {pre_stop} + drain {drain} + {GRACE_MARGIN_SECONDS} s")
    return problems


def drain_outlasts_generation(r: Render) -> list[str]:
    """Production: a generation admitted before SIGTERM ends by its own limit, before the app cuts
    the late ones (DRAIN_MARGIN seconds before the drain's end)."""
    env = r.env(r.app)
    drain = float(env.get("GATEWAY_GRACEFUL_TIMEOUT") or 0)
    longest = float(
        env.get("GATEWAY_MAX_GENERATION_SECONDS") or Settings.model_fields["max_generation_seconds"].default
    )
    if drain - DRAIN_MARGIN < longest:
        return [
            f"a rollout cuts generations: drain {drain} s - {DRAIN_MARGIN} s < generation limit {longest} s"
        ]
    return []


def probes(r: Render) -> list[str]:
    app, problems = r.app, []
    ports = {p.get("name"): p["containerPort"] for p in app.get("ports", [])}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", None)):
        get = app.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"the app has no HTTP {probe}")
            continue
        if path is not None and get.get("path") != path:
            problems.append(f"{probe} asks {get.get('path')}, not {path}")
        if ports.get(get["port"], get["port"]) != 8000:
            problems.append(f"{probe} probes port {get['port']}, not the app's :8000")
    return problems


def rolling_update(r: Render) -> list[str]:
    strategy = r.deployment["spec"].get("strategy", {})
    rolling = strategy.get("rollingUpdate", {})
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or str(rolling.get("maxUnavailable")) not in (
        "0",
        "0%",
    ):
        return [f"the rollout may take ready pods away first: {strategy}"]
    if str(rolling.get("maxSurge", "25%")) in ("0", "0%"):
        return ["maxSurge 0 with maxUnavailable 0 cannot roll out"]
    return []


def selects_pods(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def disruption_budget(r: Render) -> list[str]:
    labels = r.pod["metadata"]["labels"]
    pdbs = [p for p in r.all("PodDisruptionBudget") if selects_pods(p["spec"].get("selector", {}), labels)]
    if not pdbs:
        return ["no PodDisruptionBudget selects the gateway's pods"]
    return (
        []
        if all(str(p["spec"].get("maxUnavailable", "")) not in ("0", "0%") for p in pdbs)
        else ["a PodDisruptionBudget with maxUnavailable 0 blocks every node drain"]
    )


def service(r: Render) -> list[str]:
    nginx_ports = {p.get("name") for p in (r.container(NGINX, init=True) or {}).get("ports", [])}
    problems = []
    services = [s for s in r.all("Service") if s["metadata"]["name"] == "metagpt-gateway"]
    if not services or not selects_pods(services[0]["spec"]["selector"], r.pod["metadata"]["labels"]):
        return ["no Service metagpt-gateway selecting the gateway's pods"]
    for port in services[0]["spec"]["ports"]:
        if port["targetPort"] not in nginx_ports:
            problems.append(f"Service port {port['name']} bypasses nginx: targetPort {port['targetPort']}")
    return problems


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Gateway API duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def routes(r: Render) -> list[str]:
    """A stream must never meet a whole-request timeout: HTTPRoute timeouts set to 0s explicitly, since
    an implementation's default applies otherwise; ingress-nginx without buffering, waiting longer than
    a non-streaming completion."""
    problems = []
    longest = float(r.env(r.app).get("GATEWAY_MAX_GENERATION_SECONDS") or 900)
    for route in r.all("HTTPRoute"):
        for i, rule in enumerate(route["spec"]["rules"]):
            timeouts = rule.get("timeouts", {})
            for field in ("request", "backendRequest"):
                if field not in timeouts or duration_seconds(timeouts[field]) != 0:
                    problems.append(
                        f"HTTPRoute rule {i}: timeouts.{field} must be 0s, is {timeouts.get(field)}"
                    )
    for ingress in r.all("Ingress"):
        notes = ingress["metadata"].get("annotations", {})
        prefix = "nginx.ingress.kubernetes.io/"
        if notes.get(prefix + "proxy-buffering") != "off":
            problems.append("Ingress: proxy-buffering must be off (events would arrive in lumps)")
        for field in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(notes.get(prefix + field, "60")) < longest + 60:
                problems.append(f"Ingress: {field} must exceed GATEWAY_MAX_GENERATION_SECONDS + 60")
    if r.overlay.startswith("production") and len(r.all("HTTPRoute")) + len(r.all("Ingress")) != 1:
        problems.append("a production overlay has exactly one way in (an HTTPRoute or an Ingress)")
    return problems


def pod_monitor(r: Render) -> list[str]:
    monitors = r.all("PodMonitor")
    if not monitors:
        return ["a production overlay is scraped (PodMonitor)"] if r.overlay.startswith("production") else []
    ports = {p.get("name"): p["containerPort"] for p in r.app.get("ports", [])}
    problems = []
    for monitor in monitors:
        if not selects_pods(monitor["spec"]["selector"], r.pod["metadata"]["labels"]):
            problems.append("the PodMonitor selects no gateway pod")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if ports.get(endpoint.get("port")) != 8000 or endpoint.get("path", "/metrics") != "/metrics":
                problems.append(f"the PodMonitor scrapes {endpoint}, not the app's :8000/metrics")
    return problems


def autoscaler(r: Render) -> list[str]:
    scalers = r.all("ScaledObject") + r.all("HorizontalPodAutoscaler")
    if not scalers:
        return (
            ["a production overlay scales on active generations"]
            if r.overlay.startswith("production")
            else []
        )
    problems = []
    namespace = r.deployment["metadata"].get("namespace")
    for scaler in scalers:
        target = scaler["spec"]["scaleTargetRef"]
        if (target.get("kind", "Deployment"), target["name"]) != (
            "Deployment",
            r.deployment["metadata"]["name"],
        ):
            problems.append(f"{scaler['kind']} targets {target}, not the gateway's Deployment")
        for trigger in scaler["spec"].get("triggers", []):
            query = trigger["metadata"].get("query", "")
            if "gateway_active_generations" not in query:
                problems.append(f"the trigger does not measure active generations: {query}")
            if set(re.findall(r'namespace="([^"]*)"', query)) != {namespace}:
                problems.append(f"the query's namespace is not the overlay's ({namespace}): {query}")
    return problems


def references(r: Render) -> list[str]:
    """Every ConfigMap, Secret and key the pods name is in the render (else a pod never starts)."""
    problems = []
    for deployment in r.all("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            sources = [v["valueFrom"] for v in container.get("env", []) if "valueFrom" in v] + container.get(
                "envFrom", []
            )
            for source in sources:
                for kind, key in (
                    ("ConfigMap", "configMapKeyRef"),
                    ("Secret", "secretKeyRef"),
                    ("ConfigMap", "configMapRef"),
                    ("Secret", "secretRef"),
                ):
                    if key not in source:
                        continue
                    obj = r.named(kind, source[key]["name"])
                    if obj is None:
                        problems.append(f"{container['name']}: {kind} {source[key]['name']} is not rendered")
                    elif "key" in source[key] and source[key]["key"] not in r.data(obj):
                        problems.append(
                            f"{container['name']}: {kind} {source[key]['name']} lacks {source[key]['key']}"
                        )
        for volume in spec.get("volumes", []):
            for kind, key, name in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                if key in volume and r.named(kind, volume[key][name]) is None:
                    problems.append(f"volume {volume['name']}: {kind} {volume[key][name]} is not rendered")
    backends = [
        b["name"]
        for route in r.all("HTTPRoute")
        for rule in route["spec"]["rules"]
        for b in rule["backendRefs"]
    ]
    backends += [
        p["backend"]["service"]["name"]
        for ingress in r.all("Ingress")
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    problems += [
        f"the route's backend Service {name} is not rendered"
        for name in backends
        if not r.named("Service", name)
    ]
    return problems


def app_settings(r: Render) -> list[str]:
    unknown = sorted(set(r.env(r.app)) - SETTINGS)
    return [f"not settings of the app (app/settings.py, gunicorn.conf.py): {unknown}"] if unknown else []


def nginx_config(r: Render) -> list[str]:
    """The ConfigMap holds the repo's nginx files as they are, and every variable the template uses is set
    (the image's envsubst leaves an unset one as `${NAME}`, and nginx refuses the file)."""
    nginx = r.container(NGINX, init=True) or {}
    volumes = {v["name"]: v for v in r.pod["spec"].get("volumes", [])}
    mounted = {
        volumes[m["name"]]["configMap"]["name"]
        for m in nginx.get("volumeMounts", [])
        if "configMap" in volumes.get(m["name"], {})
    }
    problems = []
    config = r.data(r.named("ConfigMap", next(iter(mounted), "")) or {})
    for name, original in NGINX_FILES.items():
        if config.get(name) != original.read_text():
            problems.append(
                f"the nginx ConfigMap's {name} differs from {original.relative_to(ROOT)}: copy it to "
                f"deploy/kubernetes/base/nginx/ (Kustomize reads only files under the kustomization)"
            )
    unset = sorted(set(TEMPLATE_VAR.findall(config.get("gateway.conf.template", ""))) - set(r.env(nginx)))
    if unset:
        problems.append(f"the nginx sidecar does not set the template's {unset}")
    return problems


def studio_files(r: Render) -> list[str]:
    """nginx reads the studio (STUDIO_DIR) read-only from a volume that a plain init container fills from
    the app's own image, where the Dockerfile put the files (/app/studio)."""
    nginx = r.container(NGINX, init=True) or {}
    folder = r.env(nginx).get("STUDIO_DIR")
    mount = next((m for m in nginx.get("volumeMounts", []) if m["mountPath"] == folder), None)
    if mount is None or mount.get("readOnly") is not True:
        return [f"nginx does not mount its STUDIO_DIR ({folder}) read-only"]
    fillers = [
        c
        for c in r.pod["spec"].get("initContainers", [])
        if "restartPolicy" not in c
        and c["image"] == r.app["image"]
        and "/app/studio/." in c.get("command", [])
        and any(m["name"] == mount["name"] for m in c.get("volumeMounts", []))
    ]
    return [] if fillers else ["no init container copies the image's /app/studio into nginx's STUDIO_DIR"]


def locked_down(r: Render) -> list[str]:
    problems = []
    for deployment in r.all("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc, name = c.get("securityContext", {}), f"{deployment['metadata']['name']}/{c['name']}"
            if not (sc.get("runAsNonRoot") or spec.get("securityContext", {}).get("runAsNonRoot")):
                problems.append(f"{name}: runAsNonRoot")
            if (
                sc.get("allowPrivilegeEscalation") is not False
                or sc.get("readOnlyRootFilesystem") is not True
            ):
                problems.append(f"{name}: allowPrivilegeEscalation false and readOnlyRootFilesystem")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}: capabilities drop ALL")
            if "memory" not in c.get("resources", {}).get("requests", {}) or "memory" not in c[
                "resources"
            ].get("limits", {}):
                problems.append(f"{name}: memory request and limit")
    return problems


CHECKS: dict[str, Callable[[Render], list[str]]] = {
    f.__name__: f
    for f in (
        native_sidecar,
        grace_covers_drain,
        probes,
        rolling_update,
        disruption_budget,
        service,
        routes,
        pod_monitor,
        autoscaler,
        references,
        app_settings,
        nginx_config,
        studio_files,
        locked_down,
    )
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Render]]:
    """Every overlay rendered, from a copy of deploy/kubernetes where each secrets.env is the committed
    example (an operator's real secrets.env is never read)."""
    kubectl = tool("kubectl")
    tree = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    for example in tree.glob("overlays/*/secrets.env.example"):
        shutil.copy(example, example.with_name("secrets.env"))
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", str(tree / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        path = tree / f"{overlay}.yaml"
        path.write_text(result.stdout)
        out[overlay] = (path, Render(overlay, [d for d in yaml.safe_load_all(result.stdout) if d]))
    return out


def test_there_is_a_production_and_a_dev_overlay() -> None:
    assert {"production", "dev"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_overlay_is_valid_for_kubernetes(
    rendered: dict[str, tuple[Path, Render]], version: str
) -> None:
    files = [str(path) for path, _ in rendered.values()]
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Only custom resources may go unchecked; a core kind without a schema is a typo'd apiVersion.
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert unchecked <= CRD_KINDS, output


def test_the_validator_refuses_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80}], timeout: 0}\n"
    )
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSIONS[0], str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes(rendered: dict[str, tuple[Path, Render]], overlay: str, check: str) -> None:
    assert CHECKS[check](rendered[overlay][1]) == []


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.startswith("production")])
def test_production_drain_outlasts_the_longest_generation(
    rendered: dict[str, tuple[Path, Render]], overlay: str
) -> None:
    assert drain_outlasts_generation(rendered[overlay][1]) == []


def test_the_nginx_copies_in_the_base_are_the_repo_files() -> None:
    for name, original in NGINX_FILES.items():
        assert (K8S / "base" / "nginx" / name).read_bytes() == original.read_bytes(), (
            f"cp {original.relative_to(ROOT)} deploy/kubernetes/base/nginx/"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_real_secrets_stay_out_of_git(overlay: str) -> None:
    result = subprocess.run(
        ["git", "check-ignore", "-q", f"deploy/kubernetes/overlays/{overlay}/secrets.env"],
        cwd=ROOT,
        timeout=30,
    )
    if (K8S / "overlays" / overlay / "secrets.env.example").exists():
        assert result.returncode == 0, f"overlays/{overlay}/secrets.env is not ignored by git"


# Mutations of the production render, each of which one check must refuse: proof the checks can fail.
def _set(path: str, value: Any) -> Callable[[Render], None]:
    def mutate(r: Render) -> None:
        *parents, last = path.split(".")
        node: Any = r
        for part in parents:
            node = (
                getattr(node, part)
                if isinstance(node, Render)
                else node[int(part) if part.isdigit() else part]
            )
        node[last] = value

    return mutate


def _drop_kind(kind: str) -> Callable[[Render], None]:
    def mutate(r: Render) -> None:
        r.docs[:] = [d for d in r.docs if d["kind"] != kind]

    return mutate


def _nginx_as_plain_container(r: Render) -> None:
    spec = r.pod["spec"]
    spec["containers"].append(spec.pop("initContainers")[0])


def _app_env(name: str, value: str) -> Callable[[Render], None]:
    return lambda r: r.app.setdefault("env", []).append({"name": name, "value": value})


def _httproute_timeout(r: Render) -> None:
    r.all("HTTPRoute")[0]["spec"]["rules"][0]["timeouts"] = {"request": "300s", "backendRequest": "0s"}


def _query_namespace(r: Render) -> None:
    trigger = r.all("ScaledObject")[0]["spec"]["triggers"][0]["metadata"]
    trigger["query"] = trigger["query"].replace("metagpt-gateway", "default")


def _drop_init_container(name: str) -> Callable[[Render], None]:
    def mutate(r: Render) -> None:
        spec = r.pod["spec"]
        spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != name]

    return mutate


def _studio_writable(r: Render) -> None:
    nginx = r.container(NGINX, init=True) or {}
    next(m for m in nginx["volumeMounts"] if m["name"] == "studio").pop("readOnly")


def _nginx_template_var(r: Render) -> None:
    nginx = r.container(NGINX, init=True) or {}
    nginx["env"] = [v for v in nginx["env"] if v["name"] != "NGINX_PORT"]


MUTATIONS: list[tuple[str, str, Callable[[Render], None]]] = [
    ("native_sidecar", "nginx a plain container", _nginx_as_plain_container),
    ("native_sidecar", "no restartPolicy", _set("pod.spec.initContainers.0.restartPolicy", "OnFailure")),
    ("grace_covers_drain", "default 30 s grace", _set("pod.spec.terminationGracePeriodSeconds", 30)),
    ("grace_covers_drain", "drain longer than grace", _app_env("GATEWAY_GRACEFUL_TIMEOUT", "1000")),
    ("drain_outlasts_generation", "short drain", _app_env("GATEWAY_GRACEFUL_TIMEOUT", "120")),
    ("probes", "readiness on /healthz", _set("app.readinessProbe.httpGet.path", "/healthz")),
    (
        "rolling_update",
        "maxUnavailable 25%",
        _set("deployment.spec.strategy.rollingUpdate.maxUnavailable", "25%"),
    ),
    ("disruption_budget", "no PDB", _drop_kind("PodDisruptionBudget")),
    (
        "service",
        "Service to the app's port",
        _set("deployment.spec.template.spec.initContainers.0.ports.0.name", "x"),
    ),
    ("routes", "a 300 s request timeout", _httproute_timeout),
    ("routes", "no way in", _drop_kind("HTTPRoute")),
    ("pod_monitor", "scrapes nginx", _set("app.ports.0.name", "other")),
    (
        "autoscaler",
        "targets another Deployment",
        lambda r: r.all("ScaledObject")[0]["spec"]["scaleTargetRef"].update(name="x"),
    ),
    ("autoscaler", "query in another namespace", _query_namespace),
    ("references", "a missing Secret", _drop_kind("Secret")),
    ("app_settings", "a misspelt setting", _app_env("GATEWAY_GRACEFULL_TIMEOUT", "120")),
    ("nginx_config", "template variable unset", _nginx_template_var),
    ("studio_files", "nothing copies the studio", _drop_init_container("studio")),
    ("studio_files", "nginx may write the studio", _studio_writable),
    ("locked_down", "root filesystem writable", _set("app.securityContext.readOnlyRootFilesystem", False)),
]


@pytest.mark.parametrize(
    ("check", "mutation"), [(c, m) for c, m, _ in MUTATIONS], ids=[m for _, m, _ in MUTATIONS]
)
def test_each_check_refuses_a_broken_render(
    rendered: dict[str, tuple[Path, Render]], check: str, mutation: str
) -> None:
    render = Render("production", copy.deepcopy(rendered["production"][1].docs))
    assert (CHECKS | {"drain_outlasts_generation": drain_outlasts_generation})[check](render) == []
    dict((m, f) for _, m, f in MUTATIONS)[mutation](render)
    assert (CHECKS | {"drain_outlasts_generation": drain_outlasts_generation})[check](render) != []
