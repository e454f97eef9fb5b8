"""deploy/k8s validated offline: the core objects against Kubernetes' OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), the KServe objects against the KServe SDK's
models (kserve, installed --no-deps; every field must be one the model knows and every model's
own checks pass), and the manifests against the service itself: env names and values its
settings accept, probe paths it serves, ports, selectors and a grace period that covers preStop
plus the service's drain."""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path

import kubernetes.client.models
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

import deploy.entrypoint
from service.app import create_app
from service.core.settings import ENV_PREFIX, ServiceSettings



def _kserve_models() -> types.ModuleType:
    """``kserve.models`` without running ``kserve/__init__.py``: that registers KServe's v2 gRPC
    protos in the process-wide protobuf pool, where their ``inference.*`` symbols collide with the
    same protocol's stubs from tritonclient (the service's gRPC server) in one test process. The
    models need only ``kserve.configuration``."""
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("the kserve SDK is not installed (make install installs it with --no-deps)",
                        allow_module_level=True)
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


kserve_models = _kserve_models()
K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
CORE = ("deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml")
KSERVE = ("kserve/servingruntime.yaml", "kserve/inferenceservice.yaml")
# the oldest Kubernetes these manifests claim (the PDB's unhealthyPodEvictionPolicy: beta and on by
# default since 1.27, GA in 1.31) and the newest schema kubernetes-validate ships
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
NOT_ROUTED = (404, 405)
DRAIN_MARGIN_S = 5  # grace beyond preStop + drain, at least
PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "object": (object,),
              "ResourceQuantity": (str, int, float), "datetime": (str,), "date": (str,)}
LIST_TYPE = re.compile(r"^(?:list|List)\[(.+)\]$")
DICT_TYPE = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")


def load(name: str) -> dict:
    (doc,) = list(yaml.safe_load_all((K8S / name).read_text()))
    return doc


def pod_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def settings_from(container: dict, monkeypatch) -> ServiceSettings:
    """The service's settings as the container's environment makes them (pydantic validates the values)."""
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    return ServiceSettings()


def prestop_sleep_s(container: dict) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def known_env_names() -> set[str]:
    service = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}
    entrypoint = {v for k, v in vars(deploy.entrypoint).items() if k.startswith("ENV_") and isinstance(v, str)}
    return service | entrypoint


def served(path: str) -> bool:
    """The service has a GET route at ``path`` (asked without starting it: not ready yet is fine)."""
    client = TestClient(create_app(ServiceSettings()), raise_server_exceptions=False)  # no lifespan: no model load
    return client.get(path).status_code not in NOT_ROUTED


# --- a strict reader of the KServe SDK's (OpenAPI-generated) models ---------------------------
def model_class(name: str):
    for module in (kserve_models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no model class {name}")


def build(value, type_name: str, path: str = "$"):
    """``value`` (parsed YAML) as an instance of the SDK type ``type_name``: unknown fields,
    wrong primitive types and the models' own client-side checks (required fields, enums) fail."""
    if value is None:
        return None
    if m := LIST_TYPE.match(type_name):
        if not isinstance(value, list):
            raise TypeError(f"{path}: expected a list, got {type(value).__name__}")
        return [build(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(value)]
    if m := DICT_TYPE.match(type_name):
        if not isinstance(value, dict):
            raise TypeError(f"{path}: expected a map, got {type(value).__name__}")
        return {k: build(v, m.group(1) or m.group(2), f"{path}.{k}") for k, v in value.items()}
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (type_name == "int" and isinstance(value, bool)):
            raise TypeError(f"{path}: expected {type_name}, got {value!r}")
        return value
    cls = model_class(type_name)
    if not isinstance(value, dict):
        raise TypeError(f"{path}: expected a {type_name} object, got {value!r}")
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    if unknown:
        raise ValueError(f"{path}: {type_name} has no field(s) {unknown}")
    kwargs = {by_json[k]: build(v, cls.openapi_types[by_json[k]], f"{path}.{k}") for k, v in value.items()}
    return cls(**kwargs)


# --- core objects ---------------------------------------------------------------------------
def test_kustomization_lists_the_core_manifests():
    assert tuple(load("kustomization.yaml")["resources"]) == CORE


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_core_objects_validate_against_the_kubernetes_schema(name, version):
    kubernetes_validate.validate(load(name), version, strict=True)


def test_the_schema_check_can_fail():
    bad = load("deployment.yaml")
    pod_container(bad)["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    typo = load("service.yaml")
    typo["spec"]["prots"] = typo["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)


def test_deployment_matches_the_service_it_runs(monkeypatch):
    deployment = load("deployment.yaml")
    container = pod_container(deployment)
    assert set(env_of(container)) | {e["name"] for e in container["env"]} <= known_env_names()
    settings = settings_from(container, monkeypatch)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port and settings.host == "0.0.0.0"
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert served(probe["path"]) and probe["port"] == port["name"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= prestop_sleep_s(container) + settings.shutdown_timeout_s + DRAIN_MARGIN_S
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
    assert settings.torch_threads == int(limits["cpu"])  # one intra-op thread per CPU the pod may use
    sec = deployment["spec"]["template"]["spec"]["securityContext"]
    assert sec["runAsNonRoot"] and sec["runAsUser"] == 10001  # the image's user (docker/Dockerfile)
    assert env_of(container)["DGAE_ENGINE_CACHE"] in {m["mountPath"] for m in container["volumeMounts"]}


def test_service_pdb_and_hpa_point_at_the_deployment():
    deployment, service, pdb, hpa = (load(n) for n in CORE)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == pod_container(deployment)["ports"][0]["name"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # the PDB never blocks every eviction at the HPA's floor; CPU utilisation needs CPU requests
    assert pdb["spec"]["minAvailable"] < min(hpa["spec"]["minReplicas"], deployment["spec"]["replicas"])
    assert "cpu" in pod_container(deployment)["resources"]["requests"]


# --- KServe ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KSERVE)
def test_kserve_objects_read_as_the_kserve_sdk_models(name):
    doc = load(name)
    obj = build(doc, doc["apiVersion"].split("/")[1].capitalize() + doc["kind"])
    assert obj.to_dict()["spec"] is not None and obj.kind == doc["kind"]


def test_the_kserve_check_can_fail():
    doc = load("kserve/inferenceservice.yaml")
    doc["spec"]["predictor"]["model"]["protocolVersoin"] = "v2"
    with pytest.raises(ValueError, match="protocolVersoin"):
        build(doc, "V1beta1InferenceService")
    runtime = load("kserve/servingruntime.yaml")
    del runtime["spec"]["containers"][0]["name"]  # a container needs a name (the model's own check)
    with pytest.raises(ValueError, match="name"):
        build(runtime, "V1alpha1ServingRuntime")


def test_inference_service_runs_the_image_as_a_v2_predictor(monkeypatch):
    isvc, runtime = load("kserve/inferenceservice.yaml"), load("kserve/servingruntime.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]
    ]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert {e["name"] for e in container["env"]} <= known_env_names()
    settings = settings_from(container, monkeypatch)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port == container["readinessProbe"]["httpGet"]["port"]
    assert served(container["readinessProbe"]["httpGet"]["path"])
    grace = isvc["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert grace >= prestop_sleep_s(container) + settings.shutdown_timeout_s + DRAIN_MARGIN_S
    assert isvc["spec"]["predictor"]["timeout"] >= settings.request_timeout_s
    assert container["image"].split(":")[0] == pod_container(load("deployment.yaml"))["image"].split(":")[0]
