"""The deployment files (docs/deploy) against the schemas of what reads them, offline:
the Deployments and the Service against Kubernetes' own (kubernetes-validate, strict:
an unknown field is an error), the RayCluster against KubeRay's CRD (its OpenAPI
schema, walked strictly the same way), the compose file against the Compose
Specification's JSON schema. And against hexbook itself: every ``hexbook`` command in
them parses with hexbook's command line, the Ray and Python of the images are the
ones hexbook is tested with, the Services' ports are the containers'."""

from __future__ import annotations

import functools
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

from gateway import cli

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy"
SCHEMAS = Path(__file__).parent / "fixtures" / "schemas"
KUBERNETES = "1.32.0"


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@functools.cache
def raycluster_schema() -> dict[str, Any]:
    text = gzip.decompress((SCHEMAS / "ray.io_rayclusters.yaml.gz").read_bytes())
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def strict_errors(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Fields the schema does not know, as the API server would prune them (silently:
    a typo'd field is a setting that never applies); what kubeconform -strict says."""
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = []
        for k, v in value.items():
            if props is not None and k in props:
                out += strict_errors(v, props[k], f"{where}.{k}")
            elif isinstance(extra, dict):
                out += strict_errors(v, extra, f"{where}.{k}")
            elif props is not None or extra is False:
                out.append(f"{where}.{k}: not a field of this object")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            e
            for i, v in enumerate(value)
            for e in strict_errors(v, schema["items"], f"{where}[{i}]")
        ]
    return []


def check_raycluster(doc: dict[str, Any]) -> None:
    schema = raycluster_schema()
    jsonschema.Draft7Validator(schema).validate(doc)
    problems = strict_errors(doc, schema)
    assert problems == [], problems


def commands(doc: Any) -> list[list[str]]:
    """Every container/service command of a manifest or compose file."""
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "command" and isinstance(v, list) and all(isinstance(a, str) for a in v):
                found.append(v)
            else:
                found += commands(v)
    elif isinstance(doc, list):
        for v in doc:
            found += commands(v)
    return found


def images(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [v for k, v in doc.items() if k == "image" and isinstance(v, str)] + [
            i for v in doc.values() for i in images(v)
        ]
    if isinstance(doc, list):
        return [i for v in doc for i in images(v)]
    return []


def test_the_kubernetes_manifests_are_valid_kubernetes() -> None:
    kinds = []
    for doc in manifests():
        kinds.append(doc["kind"])
        if doc["kind"] == "RayCluster":
            check_raycluster(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert sorted(kinds) == ["Deployment", "Deployment", "RayCluster", "Service"]


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (["spec", "headGroupSpec", "rayStartParams"], ["num-cpus=0"], jsonschema.ValidationError),
        (["spec", "workerGroupSpecs", 0, "replicas"], "two", jsonschema.ValidationError),
        (["spec", "workerGroupSpecs", 0, "groupname"], "shards", AssertionError),
        (
            ["spec", "headGroupSpec", "template", "spec", "containers", 0, "imagee"],
            "x",
            AssertionError,
        ),
    ],
)
def test_a_raycluster_with_a_mistake_is_refused(
    path: list[Any], value: Any, error: type[Exception]
) -> None:
    doc = next(d for d in manifests() if d["kind"] == "RayCluster")
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(error):
        check_raycluster(doc)


def test_a_deployment_with_a_mistake_is_refused() -> None:
    doc = next(d for d in manifests() if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_compose_file_is_a_compose_file() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)
    broken = {**compose, "services": {**compose["services"], "redis": {"imagee": "redis"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)
    # Every variable it needs is in the example .env.
    needed = set(re.findall(r"\$\{([A-Z_]+)", (DEPLOY / "docker-compose.yml").read_text()))
    example = (DEPLOY / "compose.env.example").read_text()
    assert needed == set(re.findall(r"^([A-Z_]+)=", example, re.M)), needed


def test_every_hexbook_command_in_them_is_one_hexbook_takes() -> None:
    docs = [*manifests(), yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())]
    ran = [c for d in docs for c in commands(d) if c[0] == "hexbook"]
    assert {c[1] for c in ran} == {"up", "gateway"}, ran
    for command in ran:
        try:
            cli._parser().parse_args(command[1:])
        except SystemExit as exc:
            pytest.fail(f"{' '.join(command)}: hexbook refused it ({exc.code})")
    # The first gateway of each makes the shards on a new deployment: a count given.
    assert all("--shards" in c for c in ran if c[1] == "up")


def test_the_images_run_the_ray_and_python_hexbook_is_tested_with() -> None:
    base = re.search(r"^FROM rayproject/ray:(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert base, "the Dockerfile starts from a Ray image"
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base.group(1) == f"{ray.__version__}-{py}"
    cluster = next(d for d in manifests() if d["kind"] == "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    # One hexbook image everywhere (head, workers, gateways: the same code on each).
    assert len(set(images(manifests()))) == 1


def test_the_service_reaches_the_gateways_of_both_deployments() -> None:
    docs = manifests()
    service = next(d for d in docs if d["kind"] == "Service")
    selector = service["spec"]["selector"]
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in ports}
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--port") + 1] == str(ports[0]["containerPort"])
