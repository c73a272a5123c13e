"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster on loopback.

The state store's PostgreSQL path is tested against the server it will meet on a cluster, not a
fake: upserts, types, transactions and advisory locks are the server's own. One server is started
per test session (``initdb`` and a start take a second or two) and each test gets a database of
its own, so tests never see each other's rows.

PostgreSQL refuses to run as root, and the tests run as root here and in CI, so its commands run
as the ``postgres`` system user (Debian's package makes it), on a data folder that user owns.
Durability is switched off (``fsync``, ``synchronous_commit``): the cluster is thrown away after
the session, and the tests are about what the server accepts, not about power cuts.
"""

from __future__ import annotations

import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SEARCHED = "/usr/lib/postgresql"  # Debian's layout: /usr/lib/postgresql/<major>/bin
NEEDED = ("initdb", "pg_ctl", "postgres", "psql")
SYSTEM_USER = "postgres"
SUPERUSER = "showrunner"  # the cluster's own superuser; its password is drawn per session
START_ATTEMPTS = 3  # a free port picked here may be taken by another before the server binds
START_TIMEOUT_S = 30
SETTINGS = (  # appended to postgresql.conf: loopback only, speed over durability
    "listen_addresses = '127.0.0.1'",
    "fsync = off",
    "synchronous_commit = off",
    "full_page_writes = off",
)


class PostgresUnavailable(Exception):
    """This machine cannot start a PostgreSQL server (the message says what is missing)."""


def binaries() -> Path | None:
    """The ``bin`` folder of the newest PostgreSQL installed the Debian way, if any."""
    found = []
    for folder in Path(SEARCHED).glob("*/bin"):
        if folder.parent.name.isdigit() and all((folder / name).is_file() for name in NEEDED):
            found.append(folder)
    return max(found, key=lambda f: int(f.parent.name)) if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL server in a temporary folder, started with ``pg_ctl -w start`` and stopped
    (its folder removed) by ``stop``; ``new_database`` gives each test an empty database."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.password = secrets.token_hex(12)
        self.port = 0
        self._names = itertools.count(1)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresUnavailable(f"the {SYSTEM_USER!r} system user") from None
            self._uid: int | None = user.pw_uid
            self._gid = user.pw_gid
            self._as_user = ["runuser", "-u", SYSTEM_USER, "--"]
        else:  # (not root: the server runs as whoever runs the tests)
            self._uid, self._gid, self._as_user = None, os.getgid(), []
        # Under /tmp, not pytest's tmp_path: that is private to root (0700), and the server's
        # user must reach its own folder.
        self.root = Path(tempfile.mkdtemp(prefix="showrunner-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Make the cluster and start the server; ``RuntimeError`` with the server's log if it
        does not start."""
        self.sockets.mkdir()
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        for path in (self.root, self.sockets, password_file):
            self._own(path)
        self._run("initdb", "--pgdata", str(self.data), "--username", SUPERUSER,
                  "--pwfile", str(password_file), "--auth-local", "trust",
                  "--auth-host", "scram-sha-256", "--encoding", "UTF8", "--locale", "C",
                  "--no-sync", "--no-instructions")
        password_file.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join((*SETTINGS, f"unix_socket_directories = '{self.sockets}'"))
                       + "\n")
        for _ in range(START_ATTEMPTS):
            self.port = _free_port()
            started = self._run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log),
                                "--wait", "--timeout", str(START_TIMEOUT_S),
                                "--options", f"-p {self.port}", "start", check=False)
            if started.returncode == 0:
                return
            if "could not bind" not in self._log_tail():  # not a port taken meanwhile
                break
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n"
                           f"{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server (its sessions ended at once) and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait",
                      "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use ------------------------------------------------------------------------------------

    def url(self, database: str = "postgres", *, password: str | None = None,
            port: int | None = None) -> str:
        """The SQLAlchemy URL of ``database`` over loopback TCP, with the password (another
        ``password`` or ``port``: for the tests of what a wrong one gives)."""
        return (f"postgresql+asyncpg://{SUPERUSER}:{password or self.password}"
                f"@127.0.0.1:{port or self.port}/{database}")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with ``psql`` over the server's unix socket; what it printed."""
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "--no-psqlrc", "--quiet", "--tuples-only",
             "--no-align", "--set", "ON_ERROR_STOP=1", "--host", str(self.sockets),
             "--port", str(self.port), "--username", SUPERUSER, "--dbname", database,
             "--command", statement],
            capture_output=True, text=True, check=False, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"psql {statement!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def new_database(self) -> str:
        """A database of its own (an empty one, made now), as a SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # -- helpers --------------------------------------------------------------------------------

    def _own(self, path: Path) -> None:
        if self._uid is not None:
            os.chown(path, self._uid, self._gid)

    def _run(self, command: str, *args: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        # In the server's own folder: the working directory of the caller may be closed to it.
        done = subprocess.run([*self._as_user, str(self.bin_dir / command), *args],
                              capture_output=True, text=True, check=False, cwd=self.root,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"{command} failed: {done.stderr.strip()}")
        return done

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
