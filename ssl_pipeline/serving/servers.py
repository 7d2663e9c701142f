"""Start and stop the project's servers: `mlflow server` and a Prefect server, as subprocesses.

Both bind to 127.0.0.1 unless told otherwise, write their output to a log file (never a pipe
that could fill up and stall them), and run in their own process group so that stopping one
also stops the workers it spawned. `ssl-pipeline ui` (ssl_core/commands/ui.py) is the user's
entry point; tests start the same servers on free loopback ports.

MLflow: `sqlite:///<workspace>/mlflow.db` (the store the stages write to when no server runs),
artifacts served by the server from `<workspace>/mlartifacts`.

MLflow basic auth (`auth=True`): `mlflow server --app-name basic-auth`. The admin account is
created the first time the server meets an empty auth DB (`<workspace>/mlflow_auth.db`), from
SSL_PIPELINE_MLFLOW_USER (default "admin") and SSL_PIPELINE_MLFLOW_PASSWORD (at least 12
characters). They are handed to the server only through its environment (MLflow's
MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD); the auth config file written to
`.ssl-pipeline/basic_auth.ini` holds no secret, and nothing here prints or logs the password.
Once the admin exists, changing the variable does not change the stored password (use MLflow's
update-password API, or delete mlflow_auth.db to start over). Clients authenticate with
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

When a team outgrows SQLite, point both servers at Postgres:
  MLflow:  --backend-store-uri postgresql://USER:PASSWORD@HOST:5432/mlflow
           (`ssl-pipeline ui --mlflow-backend ...`; needs the psycopg2 package)
  Prefect: PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect
           in the environment of `ssl-pipeline ui` (the Prefect server reads it; needs asyncpg,
           which Prefect installs).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"
STATE_DIR = Path(".ssl-pipeline")        # logs and the auth config (no secrets), git-ignored
AUTH_DB = Path("mlflow_auth.db")
USER_ENV = "SSL_PIPELINE_MLFLOW_USER"
PASSWORD_ENV = "SSL_PIPELINE_MLFLOW_PASSWORD"
MIN_PASSWORD = 12                         # MLflow's own password policy


class ServerError(RuntimeError):
    """A server did not start, or stopped on its own."""


@dataclass
class Server:
    name: str
    url: str                  # what a user opens / a client points at
    health_url: str
    proc: subprocess.Popen
    log_path: Path
    _log_file: object = field(default=None, repr=False)
    workdir: Path | None = None   # removed when the server stops (a model server's checked model copy)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return resp.status == 200
        except (OSError, ValueError):   # refused, reset, timed out, HTTP errors (urllib's are OSErrors)
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll the health URL until it answers; fail early (with the log tail) if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"{self.name} server exited with code {self.proc.returncode} while starting; "
                                  f"last lines of {self.log_path}:\n{self.tail()}")
            if self.answers():
                return
            time.sleep(0.3)
        self.stop()
        raise ServerError(f"{self.name} server did not answer {self.health_url} within {timeout:.0f} s; "
                          f"last lines of {self.log_path}:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL whatever is left after `timeout`."""
        if self.alive():
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive a parent that exited; the group id is the parent's pid.
        if group_alive(self.proc.pid):
            deadline = time.monotonic() + 5
            while group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process of the group is left."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int, what: str) -> int:
    """The port to use: a free one for 0, else `port` if nothing listens there yet."""
    if port == 0:
        return free_port(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            raise ServerError(f"port {port} on {host} is already in use (another {what} server?); "
                              f"choose another port, or 0 for a free one") from None
    return port


def _tool(name: str) -> str:
    """The venv's console script (next to the running interpreter), else whatever PATH has."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    import shutil

    found = shutil.which(name)
    if found is None:
        raise ServerError(f"`{name}` is not installed in this environment")
    return found


def _die_with_parent() -> None:
    """Runs in the child before exec: if the process that started us is killed (even with
    SIGKILL), the kernel sends SIGTERM, so servers never outlive `ssl-pipeline ui`."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, url: str,
           health_url: str) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Servers start helpers by name (`mlflow models serve` runs `uvicorn`): ours come first on PATH.
    env = {**env, "PATH": os.pathsep.join([str(Path(cmd[0]).parent), env.get("PATH", "")])}
    log_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    return Server(name, url, health_url, proc, log_path, log_file)


def auth_credentials(env: dict[str, str] | None = None) -> tuple[str, str]:
    """(user, password) for the MLflow admin, from the environment only."""
    env = os.environ if env is None else env
    user = env.get(USER_ENV) or env.get("MLFLOW_TRACKING_USERNAME") or "admin"
    password = env.get(PASSWORD_ENV) or env.get("MLFLOW_TRACKING_PASSWORD") or ""
    if len(password) < MIN_PASSWORD:
        state = "is not set" if not password else f"is shorter than {MIN_PASSWORD} characters"
        raise ServerError(f"MLflow basic auth needs the admin password in {PASSWORD_ENV} "
                          f"(at least {MIN_PASSWORD} characters), but it {state}")
    return user, password


def private_file(path: Path, text: str | None = None) -> Path:
    """Create `path` readable and writable by its owner only (0600), or tighten an existing one;
    `text` replaces its content. Never follows a link planted at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if text is not None else 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)   # an existing file keeps its old mode through O_CREAT
        if text is not None:
            os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def auth_files(root: Path, state_dir: Path) -> Path:
    """The auth DB (MLflow's user store: password hashes) and the auth config, both 0600 before the
    server opens them; SQLite gives its journal files the database's mode. Returns the config path."""
    db = private_file(root / AUTH_DB)
    # No password here: MLflow takes it from MLFLOW_AUTH_ADMIN_PASSWORD in the server's env.
    return private_file(state_dir / "basic_auth.ini",
                        "[mlflow]\n"
                        "default_permission = READ\n"
                        f"database_uri = sqlite:///{db.resolve()}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")


def start_mlflow(root: Path = Path("."), port: int = 0, host: str = HOST, auth: bool = False,
                 backend_uri: str | None = None, workers: int = 1, state_dir: Path | None = None,
                 env: dict[str, str] | None = None) -> Server:
    """Start `mlflow server` for the workspace `root` (not yet ready: call wait_ready)."""
    root = Path(root).resolve()
    state_dir = Path(state_dir) if state_dir is not None else root / STATE_DIR
    port = check_port(host, port, "MLflow")
    base = dict(os.environ if env is None else env)
    child = {k: v for k, v in base.items() if not k.startswith("MLFLOW_AUTH_ADMIN")}
    # MLflow's job runner (7 huey worker processes for GenAI judges/trace jobs) costs a lot of CPU
    # and start-up time and nothing here uses it; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true restores it.
    child.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [_tool("mlflow"), "server", "--host", host, "--port", str(port), "--workers", str(workers),
           "--backend-store-uri", backend_uri or f"sqlite:///{root / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(root / "mlartifacts")]
    if auth:
        user, password = auth_credentials(base)
        cmd += ["--app-name", "basic-auth"]
        child.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_files(root, state_dir)),
                     MLFLOW_AUTH_ADMIN_USERNAME=user, MLFLOW_AUTH_ADMIN_PASSWORD=password)
        # CSRF key for the sign-up form: one per server start is enough (all workers share it).
        child.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        child.pop(PASSWORD_ENV, None)
    url = f"http://{host}:{port}"
    return _spawn("MLflow", cmd, child, root, state_dir / "mlflow-server.log", url, f"{url}/health")


def start_prefect(root: Path = Path("."), port: int = 0, host: str = HOST, services: bool = True,
                  state_dir: Path | None = None, env: dict[str, str] | None = None) -> Server:
    """Start `prefect server start` (not yet ready: call wait_ready). Its database is Prefect's
    own (PREFECT_HOME, or PREFECT_API_DATABASE_CONNECTION_URL), the one flow runs record into."""
    root = Path(root).resolve()
    state_dir = Path(state_dir) if state_dir is not None else root / STATE_DIR
    port = check_port(host, port, "Prefect")
    child = dict(os.environ if env is None else env)
    child.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    child.pop(PASSWORD_ENV, None)
    cmd = [_tool("prefect"), "server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    if not services:
        cmd.append("--no-services")
    url = f"http://{host}:{port}"
    return _spawn("Prefect", cmd, child, root, state_dir / "prefect-server.log", url, f"{url}/api/health")


def start_model_server(model_uri: str, root: Path = Path("."), port: int = 0, host: str = HOST,
                       state_dir: Path | None = None, env: dict[str, str] | None = None) -> Server:
    """`mlflow models serve -m MODEL_URI --env-manager local`: POST {"inputs": images [B, C, S, S] in
    [0, 1]} to URL/invocations, get {"predictions": logits}. Not yet ready: call wait_ready.

    The server gets a checked copy of the model (tracking/model_loading.py): a folder that is not the
    project's own pt2 program is refused here, before MLflow could import any code it names."""
    from ssl_pipeline.tracking.model_loading import checked_copy

    root = Path(root).resolve()
    state_dir = Path(state_dir) if state_dir is not None else root / STATE_DIR
    port = check_port(host, port, "model")
    child = dict(os.environ if env is None else env)
    child.pop(PASSWORD_ENV, None)
    # The pipeline logs torch.export programs: serving them never needs to unpickle anything.
    child["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    served = state_dir / "served-models" / f"{port}-{secrets.token_hex(4)}"
    served.parent.mkdir(parents=True, exist_ok=True)
    with _tracking_env(child):
        checked_copy(model_uri, served)
    cmd = [_tool("mlflow"), "models", "serve", "-m", str(served), "--env-manager", "local",
           "-h", host, "-p", str(port), "-w", "1"]
    url = f"http://{host}:{port}"
    server = _spawn("model", cmd, child, root, state_dir / "model-server.log", url, f"{url}/ping")
    server.workdir = served
    return server


@contextlib.contextmanager
def _tracking_env(env: dict[str, str]) -> Iterator[None]:
    """Resolve models:/ and runs:/ URIs against the tracking store the server will use."""
    import mlflow

    before = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in env else None
    if before is not None:
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        yield
    finally:
        if before is not None:
            mlflow.set_tracking_uri(before)


def stop_all(servers: list[Server]) -> None:
    # Signal every group first so they shut down in parallel, then wait for each.
    for server in servers:
        if server.alive():
            _signal_group(server.pid, signal.SIGTERM)
    for server in servers:
        server.stop()
