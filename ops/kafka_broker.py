"""A real single-node Apache Kafka broker (KRaft mode) that recloop fetches and runs itself.

The official ``org.apache.kafka:kafka_2.13`` jars and a log4j2 binding are fetched once with
Maven into ``.recloop/kafka/libs``; the broker runs as one JVM (``kafka.Kafka``) acting as
broker and controller, its data under ``.recloop/kafka/data``. No Docker, no mock.

``LocalKafka(..., secure=True)`` runs it the way a managed cluster is reached: **SASL_SSL** with SCRAM-SHA-512
on its client port. Java's ``keytool`` makes a self-signed certificate for ``localhost`` (its PEM is the CA
file clients trust), the SCRAM users are written when the storage is formatted, and the passwords are random,
in files readable by the owner only (:class:`BrokerSecrets`). :meth:`LocalKafka.client_settings` gives the
:class:`~streams.settings.KafkaSettings` a client needs.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.settings import KafkaSettings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SCALA_VERSION = "2.13"
#: Jars that must be present for a usable broker; a partial fetch is detected by these.
REQUIRED_JARS = (f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar", f"kafka-clients-{KAFKA_VERSION}.jar",
                 f"kafka-server-{KAFKA_VERSION}.jar", f"kafka-raft-{KAFKA_VERSION}.jar",
                 f"log4j-core-{LOG4J_VERSION}.jar", f"log4j-slf4j-impl-{LOG4J_VERSION}.jar")

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>recloop</groupId><artifactId>kafka-runtime</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_{SCALA_VERSION}</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2_CONFIG = """status = warn
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_dir}/server.log
appender.file.filePattern = {log_dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerError(RuntimeError):
    """The local broker cannot be fetched, started or reached; the message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    reachable: bool
    home: Path

    def describe(self) -> str:
        state = "running" if self.running else "stopped"
        reach = "answers metadata requests" if self.reachable else "not reachable"
        pid = f" (pid {self.pid})" if self.pid else ""
        return f"kafka {state}{pid} at {self.bootstrap}: {reach}; state in {self.home}"


SCRAM_MECHANISM = "SCRAM-SHA-512"
CLIENT_USER = "recloop"
BROKER_USER = "broker"  # the broker's own user on its SASL_SSL listener (inter-broker and controller traffic)


@dataclass(frozen=True)
class BrokerSecrets:
    """The secured broker's certificate and passwords under ``<home>/tls``, made once (0600 files)."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.directory / "truststore.p12"

    def password_file(self, name: str) -> Path:
        """The file holding the password called ``name`` (made on first use)."""
        self.password(name)
        return self.directory / f"{name}.password"

    def password(self, name: str) -> str:
        """The random password called ``name`` (made on first use)."""
        path = self.directory / f"{name}.password"
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def make_certificate(self) -> None:
        """A self-signed RSA certificate for localhost in a PKCS12 keystore, its PEM, and a truststore with it."""
        if self.keystore.exists() and self.ca_file.exists() and self.truststore.exists():
            return
        keytool = _require_tool("keytool", "Java's keytool (part of the JDK/JRE 17)")
        store = self.password("keystore")
        for path in (self.keystore, self.ca_file, self.truststore):
            path.unlink(missing_ok=True)
        steps = [
            [keytool, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
             "-dname", "CN=localhost", "-ext", "SAN=dns:localhost,ip:127.0.0.1", "-keystore", str(self.keystore),
             "-storetype", "PKCS12", "-storepass", store, "-keypass", store],
            [keytool, "-exportcert", "-rfc", "-alias", "broker", "-keystore", str(self.keystore),
             "-storetype", "PKCS12", "-storepass", store, "-file", str(self.ca_file)],
            [keytool, "-importcert", "-noprompt", "-alias", "ca", "-file", str(self.ca_file),
             "-keystore", str(self.truststore), "-storetype", "PKCS12", "-storepass", store],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                raise BrokerError(f"keytool failed ({step[1]}): {result.stdout}{result.stderr}".replace(store, "***"))


class LocalKafka:
    """Fetch, start, stop and inspect the project's own broker under ``home`` (``secure``: SASL_SSL only)."""

    def __init__(self, home: Path, *, port: int = 9092, controller_port: int | None = None,
                 heap: str = "768m", secure: bool = False) -> None:
        root = Path(home).resolve()
        # A secure broker keeps its own state (data, users, certificate) next to the plaintext one; both run
        # the same jars.
        self.home = root / ("kafka-secure" if secure else "kafka")
        self.port = port
        self.controller_port = controller_port or port + 1
        self.heap = heap
        self.secure = secure
        self.libs = root / "kafka" / "libs"
        self.data = self.home / "data"
        self.logs = self.home / "logs"
        self.pid_file = self.home / "broker.pid"
        self.secrets = BrokerSecrets(self.home / "tls")

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def client_settings(self, **overrides) -> KafkaSettings:
        """Settings of a client of this broker (with SASL_SSL, the client user's SCRAM password and the CA)."""
        if not self.secure:
            return KafkaSettings(kafka_bootstrap=self.bootstrap, **overrides)
        return KafkaSettings(kafka_bootstrap=self.bootstrap, kafka_security_protocol="SASL_SSL",
                             kafka_sasl_mechanism=SCRAM_MECHANISM, kafka_sasl_username=CLIENT_USER,
                             kafka_sasl_password=self.secrets.password(CLIENT_USER),
                             kafka_ssl_cafile=self.secrets.ca_file, **overrides)

    def _probe_options(self) -> dict:
        return self.client_settings().security_options() if self.secure else {}

    # ------------------------------------------------------------------ fetch

    def missing_jars(self) -> list[str]:
        return [jar for jar in REQUIRED_JARS if not (self.libs / jar).is_file()]

    def fetch(self) -> None:
        """Download the broker jars with Maven, once. Idempotent."""
        if not self.missing_jars():
            return
        _require_tool("java", "Java 17 (e.g. `apt-get install openjdk-17-jre-headless`)")
        mvn = _require_tool("mvn", "Maven (e.g. `apt-get install maven`)")
        build = self.libs.parent / "fetch"
        build.mkdir(parents=True, exist_ok=True)
        (build / "pom.xml").write_text(POM)
        staging = self.libs.parent / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("fetching Kafka %s jars with Maven into %s", KAFKA_VERSION, self.libs)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(build / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise BrokerError(f"Maven could not fetch org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION}:\n"
                              f"{(result.stdout + result.stderr)[-2000:]}")
        # Kafka's runtime scope brings an slf4j 1.x API; the log4j binding above matches it.
        for stale in staging.glob("log4j-slf4j2-impl-*.jar"):
            stale.unlink()
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        missing = self.missing_jars()
        if missing:
            raise BrokerError(f"Kafka jars incomplete in {self.libs}; missing {missing}. "
                              f"Delete {self.libs} and run `recloop kafka start` again.")

    # ------------------------------------------------------------------ lifecycle

    def _listener_properties(self) -> list[str]:
        if not self.secure:
            return [f"listeners=PLAINTEXT://localhost:{self.port},CONTROLLER://localhost:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://localhost:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT"]
        self.secrets.make_certificate()
        store = self.secrets.password("keystore")
        login = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{BROKER_USER}" '
                 f'password="{self.secrets.password(BROKER_USER)}";')
        # The controller listener stays on localhost in plaintext: only this JVM talks to it.
        return [f"listeners=SASL_SSL://localhost:{self.port},CONTROLLER://localhost:{self.controller_port}",
                f"advertised.listeners=SASL_SSL://localhost:{self.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
                "inter.broker.listener.name=SASL_SSL",
                f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
                f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
                f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config={login}",
                f"ssl.keystore.location={self.secrets.keystore}", "ssl.keystore.type=PKCS12",
                f"ssl.keystore.password={store}", f"ssl.key.password={store}",
                f"ssl.truststore.location={self.secrets.truststore}", "ssl.truststore.type=PKCS12",
                f"ssl.truststore.password={store}"]

    def _server_properties(self) -> Path:
        path = self.home / "server.properties"
        _write_private(path, "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@localhost:{self.controller_port}",
            *self._listener_properties(),
            f"log.dirs={self.data}",
            "num.partitions=4",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            f"message.max.bytes={MAX_MESSAGE_BYTES}",
            f"replica.fetch.max.bytes={MAX_MESSAGE_BYTES}",
            f"socket.request.max.bytes={2 * MAX_MESSAGE_BYTES}",
            "auto.create.topics.enable=true",
            "log.retention.hours=-1",
            "log.cleaner.backoff.ms=5000",
            "",
        ]))
        return path

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        java = _require_tool("java", "Java 17 (e.g. `apt-get install openjdk-17-jre-headless`)")
        return [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "-cp", f"{self.libs}/*", *args]

    def _format_storage(self, properties: Path) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        users = []
        if self.secure:  # SCRAM credentials live in the cluster metadata: written when the storage is formatted
            for user in (BROKER_USER, CLIENT_USER):
                users += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={self.secrets.password(user)}]"]
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties), *users),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}"
            for user in (BROKER_USER, CLIENT_USER) if self.secure else ():
                output = output.replace(self.secrets.password(user), "***")
            raise BrokerError(f"could not format Kafka storage in {self.data}:\n{output}")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None  # the pid was reused by something else
        return pid

    def start(self, *, timeout_s: float = 90.0) -> BrokerStatus:
        """Start the broker (idempotent) and wait until it answers metadata requests."""
        if self.pid() is not None:
            wait_until_reachable(self.bootstrap, timeout_s=timeout_s, options=self._probe_options())
            return self.status()
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise BrokerError(f"port {port} is already taken by another process; stop it, or point "
                                  f"RECLOOP_KAFKA_BOOTSTRAP at the broker that is running there")
        self.fetch()
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "log4j2.properties").write_text(LOG4J2_CONFIG.format(log_dir=self.logs))
        properties = self._server_properties()
        self._format_storage(properties)
        stdout = open(self.logs / "stdout.log", "ab")
        process = subprocess.Popen(
            self._java("kafka.Kafka", str(properties), heap=self.heap),
            stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI that started it; stopped by `recloop kafka stop`
        )
        stdout.close()
        self.pid_file.write_text(str(process.pid))
        log.info("started Kafka broker pid=%s bootstrap=%s", process.pid, self.bootstrap)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (self.logs / "stdout.log").read_text(errors="replace")[-3000:]
                raise BrokerError(f"Kafka exited with code {process.returncode} during start; see "
                                  f"{self.logs}/server.log. Last output:\n{tail}")
            if broker_reachable(self.bootstrap, timeout_s=2.0, options=self._probe_options()):
                return self.status()
            time.sleep(0.5)
        raise BrokerError(f"Kafka did not answer on {self.bootstrap} within {timeout_s:.0f}s; "
                          f"see {self.logs}/server.log")

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Stop the broker gracefully (SIGTERM, then SIGKILL). Returns whether one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            log.warning("Kafka pid=%s did not stop within %.0fs; killing it", pid, timeout_s)
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> BrokerStatus:
        pid = self.pid()
        return BrokerStatus(running=pid is not None, pid=pid, bootstrap=self.bootstrap,
                            reachable=(broker_reachable(self.bootstrap, timeout_s=2.0, options=self._probe_options())
                                       if pid else False),
                            home=self.home)


def broker_reachable(bootstrap: str, *, timeout_s: float = 5.0, options: dict | None = None) -> bool:
    """True when the cluster answers a metadata request (``options``: a client's security keyword arguments,
    :meth:`streams.settings.KafkaSettings.security_options`). Quiet: "connection refused" while a broker
    starts is the expected answer here, not an error worth kafka-python's ERROR log lines."""
    with _quiet("kafka"):
        return _answers_metadata(bootstrap, timeout_s, options or {})


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _answers_metadata(bootstrap: str, timeout_s: float, options: dict) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 client_id="recloop-probe", **options)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def wait_until_reachable(bootstrap: str, *, timeout_s: float = 60.0, options: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if broker_reachable(bootstrap, timeout_s=2.0, options=options):
            return
        time.sleep(0.5)
    raise BrokerError(f"no Kafka broker answers at {bootstrap} within {timeout_s:.0f}s")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (passwords, and properties that hold them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` was not found on PATH; recloop's local broker needs {hint}")
    return path


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists() and ") Z " in stat.read_text():
        return False  # zombie: exited, not yet reaped
    return True
