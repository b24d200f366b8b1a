"""Helpers to start real servers for the tests: free ports, waiting for readiness, the bao binary,
PostgreSQL (as the `postgres` user) and nginx (a real TLS consumer)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from cryptography import x509

from tests.polling import wait_for


class _Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


class SharedServer(Generic[S]):
    """One server per test process however many modules hold its session fixture (pytest keeps one
    per module that imports the fixture): made (by `make`) for the first, closed after the last."""

    def __init__(self) -> None:
        self._server: S | None = None
        self._users = 0

    @contextmanager
    def use(self, make: Callable[[], S]) -> Iterator[S]:
        if self._server is None:
            self._server = make()
        self._users += 1
        try:
            yield self._server
        finally:
            self._users -= 1
            if self._users == 0:
                self._server.close()
                self._server = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_binary(name: str) -> str:
    """A console script installed beside the running Python (the test extra's packages)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: pip install -e '.[test]'")
    return found


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    def answers() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answers
        except OSError:
            return False

    if not wait_for(answers, timeout, step=0.1):
        raise RuntimeError(f"{url} did not answer within {timeout}s")


# -- PostgreSQL (Debian's postgresql-15) ------------------------------------------------------

def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live (`pg_config --bindir`, else Debian's newest
    /usr/lib/postgresql/N/bin), or None when the PostgreSQL server is not installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                         if p.parent.name.isdigit() else 0, reverse=True)
    return next((b for b in candidates if (b / "initdb").exists() and (b / "pg_ctl").exists()), None)


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL on loopback; `admin` is a superuser with a password."""

    host: str
    port: int
    admin: str
    admin_password: str

    def connection_url(self) -> str:
        """The URL template OpenBao's postgresql-database-plugin takes (it fills the admin in)."""
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@{self.host}:{self.port}/postgres?sslmode=disable"

    def connect(self, user: str, password: str):  # type: ignore[no-untyped-def]
        """A psycopg connection as `user`; raises psycopg.OperationalError when the login is refused."""
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, user=user, password=password,
                               dbname="postgres", connect_timeout=5, sslmode="disable")

    def can_login(self, user: str, password: str) -> bool:
        import psycopg

        try:
            with self.connect(user, password) as conn:
                return conn.execute("select current_user").fetchone() == (user,)
        except psycopg.OperationalError:
            return False


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args]


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """initdb + pg_ctl as the `postgres` user, in a fresh directory it owns, on a free loopback
    port; its socket stays in that directory too. Stopped and removed at the end."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL not installed (pg_config missing)")
    import pwd

    owner = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="bridge-pg-"))  # under /tmp: the postgres user can reach it
    password = f"pw-{uuid.uuid4().hex}"
    try:
        (base / "pwfile").write_text(password + "\n")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        os.chown(base / "pwfile", owner.pw_uid, owner.pw_gid)
        data = base / "data"
        subprocess.run(_as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "admin",
                                    f"--pwfile={base / 'pwfile'}", "--auth-local=trust",
                                    "--auth-host=scram-sha-256", "-E", "UTF8"),
                       check=True, capture_output=True)
        port = free_port()
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
                                    "-o", options, "-w", "-t", "60", "start"),
                       check=True, capture_output=True)
        try:
            yield Postgres("127.0.0.1", port, "admin", password)
        finally:
            subprocess.run(_as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                           capture_output=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- nginx (Debian's nginx package), a real TLS consumer ----------------------------------------

def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


@dataclass
class Nginx:
    """nginx serving HTTPS on loopback with the cert/key files it was given; SIGHUP to the pid in
    `pid_file` reloads them (what an on_change signal action does)."""

    port: int
    pid_file: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def served_certificate(self) -> x509.Certificate:
        """The certificate nginx presents now (a fresh TLS handshake)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nginx(directory: Path, cert_file: Path, key_file: Path) -> Nginx:
    """nginx in the foreground (`daemon off`, so the test owns the master process) with its config,
    pid file, logs and temp paths under `directory`. Its master reads cert_file/key_file at start
    and on every SIGHUP."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not installed")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    pid_file = directory / "nginx.pid"
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (directory / "nginx.conf").write_text(f"""\
daemon off;
worker_processes 1;
pid {pid_file};
error_log {directory / 'error.log'} notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert_file};
        ssl_certificate_key {key_file};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    process = subprocess.Popen([binary, "-p", str(directory), "-e", str(directory / "error.log"),
                                "-c", str(directory / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Nginx(port, pid_file, process)

    def serving() -> bool:
        if process.poll() is not None:
            log = (directory / "error.log").read_text(errors="replace") if (directory / "error.log").exists() else ""
            raise RuntimeError(f"nginx exited with {process.returncode}: {log[-500:]}")
        if not pid_file.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    if wait_for(serving, 20, step=0.05):
        return server
    server.stop()
    raise RuntimeError("nginx did not start within 20s")
