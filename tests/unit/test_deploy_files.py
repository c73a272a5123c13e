"""The deployment files parse, pass Ray's own validation, and agree with each other and with the
code: the cluster launcher file (``cluster.yaml``), the Serve config and the KubeRay RayService.

A cluster file that ``ray up`` rejects, or a Serve config naming an app or deployment the code no
longer has, fails only when someone deploys; here it fails in ``make test``.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from pydantic import BaseModel

from pipelines.settings import Settings

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster.yaml"
SERVE_CONFIG = ROOT / "deploy" / "serve_config.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay-rayservice.yaml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return load(CLUSTER)


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    return load(SERVE_CONFIG)


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(RAYSERVICE.read_text(encoding="utf-8")))
    [service] = [d for d in documents if d and d.get("kind") == "RayService"]
    return service


def pyproject_ray() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [ray] = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray"]
    return ray


def checkout_mount(cluster: dict[str, Any]) -> str:
    """Where on the nodes ``file_mounts`` put this checkout (its local side is ``.``)."""
    [remote] = [remote for remote, local in cluster["file_mounts"].items() if local == "."]
    return remote


def cluster_ray_pin(cluster: dict[str, Any]) -> Version:
    """The Ray release setup_commands install: ``ray[...]==X.Y.Z``."""
    pins = {m for command in cluster["setup_commands"]
            for m in re.findall(r"\bray\[[\w,]+\]==([\w.]+)", command)}
    assert len(pins) == 1, f"setup_commands should pin one Ray release, not {pins or 'none'}"
    return Version(pins.pop())


# -- cluster.yaml -----------------------------------------------------------------------------


def test_cluster_passes_the_checks_ray_up_makes(cluster: dict[str, Any]) -> None:
    """``ray up`` fills in the provider's defaults, then validates against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(cluster)
    validate_config(prepare_config(cluster))


def test_cluster_has_a_head_and_a_worker_type_within_limits(cluster: dict[str, Any]) -> None:
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in types
    workers = {name: spec for name, spec in types.items() if name != head}
    assert workers, "no worker node type"
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] <= spec["max_workers"], name
        assert spec["max_workers"] <= cluster["max_workers"], name
    assert sum(spec["min_workers"] for spec in workers.values()) <= cluster["max_workers"]
    for name, spec in types.items():
        assert spec["node_config"]["InstanceType"], name
        assert spec["node_config"]["ImageId"], f"{name}: Ray's default AMI has too old a Python"


def test_cluster_runs_no_container(cluster: dict[str, Any]) -> None:
    assert not cluster.get("docker", {}).get("image")


def test_cluster_pins_the_ray_release_pyproject_asks_for(cluster: dict[str, Any]) -> None:
    pin = cluster_ray_pin(cluster)
    required = pyproject_ray()
    assert pin in required.specifier, f"cluster.yaml pins ray {pin}; pyproject wants {required}"
    assert "serve" in required.extras


def test_cluster_installs_the_synced_checkout(cluster: dict[str, Any]) -> None:
    remote = checkout_mount(cluster)  # `ray up` runs from the repository root
    remote_home = remote.replace("/home/ubuntu", "~")
    assert any(f"-e {remote_home}" in c or f"-e {remote}" in c
               for c in cluster["setup_commands"]), "setup_commands do not pip install -e it"
    assert ".venv" in cluster["rsync_exclude"]  # hundreds of MB, and built for another machine


def test_cluster_reaches_s3_through_instance_roles_and_shares_no_filesystem(
        cluster: dict[str, Any]) -> None:
    for name, spec in cluster["available_node_types"].items():
        profile = spec["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name}: no IAM instance profile"
    setup = " ".join(cluster["setup_commands"])
    assert "nfs" not in setup and "mount " not in setup, "episodes no longer need shared storage"
    # The settings file the start commands export is one that file_mounts put on every node
    # (a worker the autoscaler adds gets the head's copy), not a path only the head has.
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    sourced = {m for c in starts for m in re.findall(r"\. (\S+showrunner\.env);", c)}
    assert len(sourced) == 1, sourced
    env_file = sourced.pop().replace("~", "/home/ubuntu", 1)
    assert any(env_file.startswith(remote.rstrip("/") + "/") for remote, local in
               cluster["file_mounts"].items() if local != "."), f"{env_file} is on no mount"


def key_lines_without_comment(text: str) -> list[str]:
    """Lines that start a mapping key with no comment on them or on the line above."""
    bare = []
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        starts_key = re.match(r"""^(- )?("[^"]+"|[\w.]+):(\s|$)""", stripped)
        if starts_key and "#" not in stripped and not previous.startswith("#"):
            bare.append(line)
        previous = stripped
    return bare


def test_every_cluster_field_is_commented() -> None:
    assert key_lines_without_comment(CLUSTER.read_text(encoding="utf-8")) == []


# -- the Serve config and the RayService ------------------------------------------------------


def serve_schema(config: dict[str, Any]) -> Any:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(config)


def top_level_names(module: Path) -> tuple[set[str], set[str]]:
    """Names a module assigns, and classes it defines, at its top level (read, not imported)."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    return assigned, classes


def settings_field(env_var: str) -> bool:
    """Whether ``SHOWRUNNER_A__B`` names a field ``a.b`` of the settings."""
    model: type[BaseModel] = Settings
    parts = env_var.removeprefix("SHOWRUNNER_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def apps_of(config: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {app["name"]: (app["import_path"], [d["name"] for d in app.get("deployments", [])])
            for app in config["applications"]}


def test_serve_configs_parse_and_name_the_same_app(serve_config: dict[str, Any],
                                                   rayservice: dict[str, Any]) -> None:
    in_kuberay = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    serve_schema(serve_config)
    serve_schema(in_kuberay)
    assert apps_of(serve_config) == apps_of(in_kuberay)
    assert [path for path, _ in apps_of(serve_config).values()] == ["serve_app:app"]


def test_the_served_app_and_deployments_exist_in_the_code(serve_config: dict[str, Any]) -> None:
    for import_path, deployments in apps_of(serve_config).values():
        module, attribute = import_path.split(":")
        assigned, classes = top_level_names(ROOT / f"{module}.py")
        assert attribute in assigned
        assert set(deployments) <= classes


def test_serve_environment_names_real_settings_and_no_secrets(
        serve_config: dict[str, Any], rayservice: dict[str, Any], cluster: dict[str, Any]) -> None:
    in_kuberay = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    for config in (serve_config, in_kuberay):
        for app in config["applications"]:
            env = app["runtime_env"]["env_vars"]
            for name in env:
                if name.startswith("SHOWRUNNER_"):
                    assert settings_field(name), f"{name} is not a setting"
                    assert not name.endswith(("API_KEY", "API_KEYS")), f"{name}: a secret"
                else:
                    assert name == "PYTHONPATH", name
    # On the launcher's cluster, serve_app.py is found in the checkout cluster.yaml syncs, and
    # the keys file in the folder it copies to every node (a replica may start on any of them).
    assert {a["runtime_env"]["env_vars"]["PYTHONPATH"]
            for a in serve_config["applications"]} == {checkout_mount(cluster)}
    mounted = [remote.rstrip("/") + "/" for remote, local in cluster["file_mounts"].items()
               if local != "."]
    for app in serve_config["applications"]:
        keys_file = app["runtime_env"]["env_vars"].get("SHOWRUNNER_API_KEYS_FILE")
        assert keys_file is None or keys_file.startswith(tuple(mounted)), keys_file


# A storage or state URL: a bucket's name and a database's password belong in the nodes'
# environment (a Secret, showrunner.env), not in a config the dashboard shows.
STORAGE_OR_STATE_URL = re.compile(r"\b(s3a?|gs|gcs|file|postgres(ql)?(\+\w+)?|sqlite(\+\w+)?)://")


def strings(value: Any) -> list[str]:
    """Every string in a parsed YAML document, keys and values."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def test_serve_configs_write_no_storage_or_state_url(serve_config: dict[str, Any],
                                                     rayservice: dict[str, Any]) -> None:
    configs = {SERVE_CONFIG.name: serve_config,
               "serveConfigV2": yaml.safe_load(rayservice["spec"]["serveConfigV2"])}
    for where, config in configs.items():
        for app in config["applications"]:
            env = app["runtime_env"]["env_vars"]
            assert not {"SHOWRUNNER_STORAGE", "SHOWRUNNER_STATE_URL"} & set(env), where
        urls = [s for s in strings(config) if STORAGE_OR_STATE_URL.search(s)]
        assert not urls, f"{where} writes a storage or state URL: {len(urls)} of them"


def test_rayservice_has_head_and_workers_with_resources_and_secret_keys(
        rayservice: dict[str, Any], cluster: dict[str, Any]) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    spec = rayservice["spec"]["rayClusterConfig"]
    assert Version(spec["rayVersion"]) == cluster_ray_pin(cluster)
    pods = [spec["headGroupSpec"]["template"]["spec"]]
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pods.append(group["template"]["spec"])
    assert len(pods) >= 2
    images = set()
    for pod in pods:
        [container] = pod["containers"]
        images.add(container["image"])
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = {e["name"]: e for e in container["env"]}
        for secret in ("SHOWRUNNER_API_KEYS", "SHOWRUNNER_STORAGE", "SHOWRUNNER_STATE_URL"):
            assert env[secret]["valueFrom"]["secretKeyRef"]["name"], secret
        for name, entry in env.items():
            if name.startswith("SHOWRUNNER_"):
                assert settings_field(name), f"{name} is not a setting"
            if "API_KEY" in name or name in {"SHOWRUNNER_STORAGE", "SHOWRUNNER_STATE_URL"}:
                assert "value" not in entry, f"{name} must come from a Secret"
    assert len(images) == 1  # one image: the same code and Ray everywhere


def offered_resources(group: dict[str, Any]) -> set[str]:
    """The custom resources a KubeRay group's ``rayStartParams`` give its nodes, written as
    KubeRay wants them: a JSON object inside a quoted string, ``'"{\\"on_demand\\": 1}"'``."""
    text = group.get("rayStartParams", {}).get("resources")
    return set(json.loads(json.loads(text))) if text else set()


def test_rayservice_places_parts_on_resources_its_nodes_offer(
        rayservice: dict[str, Any]) -> None:
    spec = rayservice["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    offered = set().union(*(offered_resources(g) for g in groups))
    for group in groups:
        [container] = group["template"]["spec"]["containers"]
        for entry in container["env"]:
            if entry["name"].startswith("SHOWRUNNER_PLACEMENT__"):
                asked = set(json.loads(entry["value"]))
                assert asked <= offered, f"{entry['name']} asks for {asked - offered}: no node"


def test_rayservice_keeps_no_episodes_on_a_volume_and_its_gcs_in_redis(
        rayservice: dict[str, Any]) -> None:
    documents = list(yaml.safe_load_all(RAYSERVICE.read_text(encoding="utf-8")))
    assert not [d for d in documents if d and d.get("kind") == "PersistentVolumeClaim"]
    spec = rayservice["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert not pod.get("volumes"), "episodes go to object storage, not a shared volume"
    # GCS fault tolerance, KubeRay >= 1.3's way: the field, with the password from a Secret
    # (the older ray.io/ft-enabled annotation cannot be combined with it).
    ft = spec["gcsFaultToleranceOptions"]
    assert re.fullmatch(r"(redis://)?[\w.-]+:\d+", ft["redisAddress"]), ft["redisAddress"]
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    assert "ray.io/ft-enabled" not in rayservice["metadata"].get("annotations", {})


def test_every_node_s_proxy_answers_errors_as_json(rayservice: dict[str, Any],
                                                    cluster: dict[str, Any]) -> None:
    """Serve's proxy reads its callback from the environment of ``ray start`` on each node."""
    import serve_app

    variable, value = serve_app.PROXY_CALLBACK_VARIABLE, "serve_app:proxy_middlewares"
    assert callable(getattr(serve_app, value.partition(":")[2]))
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all(f"{variable}={value} ray start" in c for c in starts if "ray start" in c)
    spec = rayservice["spec"]["rayClusterConfig"]
    for pod in [spec["headGroupSpec"]["template"]["spec"],
                *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]:
        [container] = pod["containers"]
        assert {e["name"]: e.get("value") for e in container["env"]}[variable] == value
