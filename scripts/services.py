#!/usr/bin/env python3
"""Run the real PostgreSQL and Redis that svctrace's own tests talk to: start|stop|status|env.

Both servers bind to 127.0.0.1 only and keep their data in a private directory
(SVCTRACE_SERVICES_DIR, default <repo>/.services, mode 0700). Ports come from
SVCTRACE_PG_PORT (5432) and SVCTRACE_REDIS_PORT (6379). Stdlib only, so it runs before any
venv exists. As root the servers run as the `postgres` OS user, because initdb refuses root
and a test database server has no business running as root; otherwise as the current user.
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DB = "svctrace"  # database name and its owning superuser role
DEBIAN_SOCKET_DIR = Path("/var/run/postgresql")  # libpq's compiled-in default on Debian
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


class ServiceError(Exception):
    """A failure with a message meant for the user as is."""


# ---------------------------------------------------------------- settings

def service_user() -> pwd.struct_passwd:
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("running as root needs the `postgres` OS user "
                               "(install postgresql, e.g. via scripts/setup.sh)") from None
    return pwd.getpwuid(os.geteuid())


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Can `user` traverse to `path`'s parent? (a clone in /root is not, for postgres)."""
    if os.geteuid() != 0 or user.pw_uid == 0:
        return True
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return subprocess.run(["test", "-x", str(parent)], user=user.pw_uid, group=user.pw_gid,
                          extra_groups=[], stdin=subprocess.DEVNULL).returncode == 0


def services_dir(user: pwd.struct_passwd, pg_port: int) -> Path:
    override = os.environ.get("SVCTRACE_SERVICES_DIR")
    if override:
        return Path(override).resolve()
    default = REPO / ".services"
    socket_len = len(str(default / "pg" / f".s.PGSQL.{pg_port}"))
    if _reachable_by(user, default) and socket_len <= SUN_PATH_MAX:
        return default
    # Deterministic fallback so start, env and status agree without shared state.
    tag = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    return Path(f"/var/tmp/svctrace-services-{tag}")


def settings() -> dict:
    pg_port = int(os.environ.get("SVCTRACE_PG_PORT", "5432"))
    redis_port = int(os.environ.get("SVCTRACE_REDIS_PORT", "6379"))
    user = service_user()
    base = services_dir(user, pg_port)
    return {
        "user": user, "dir": base, "pg_port": pg_port, "redis_port": redis_port,
        "pg_data": base / "pg" / "data", "pg_socket_dir": base / "pg",
        "pg_log": base / "pg" / "postgres.log",
        "redis_dir": base / "redis", "redis_pid": base / "redis" / "redis.pid",
        "redis_log": base / "redis" / "redis.log",
        "timeout": float(os.environ.get("SVCTRACE_SERVICES_TIMEOUT", "30")),
    }


def public_env(s: dict) -> dict:
    """What clients need; printed by `env` and read by tests/support/services.py."""
    return {
        "SVCTRACE_PG_DSN": f"postgresql://{DB}@127.0.0.1:{s['pg_port']}/{DB}",
        "SVCTRACE_PG_SOCKET_DIR": str(s["pg_socket_dir"]),
        "SVCTRACE_PG_PORT": str(s["pg_port"]),
        "SVCTRACE_REDIS_URL": f"redis://127.0.0.1:{s['redis_port']}/0",
        "SVCTRACE_REDIS_PORT": str(s["redis_port"]),
        "SVCTRACE_SERVICES_DIR": str(s["dir"]),
    }


def pg_bin(name: str) -> str:
    """Debian keeps server binaries out of PATH, per major version; prefer the newest."""
    override = os.environ.get("SVCTRACE_PG_BIN")
    dirs = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name),
        reverse=True)
    for d in dirs:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"PostgreSQL's `{name}` was not found (looked in "
                           "/usr/lib/postgresql/*/bin and PATH): run scripts/setup.sh")
    return found


# ---------------------------------------------------------------- helpers

def as_user_kw(s: dict) -> dict:
    u = s["user"]
    if os.geteuid() == 0 and u.pw_uid != 0:
        return {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []}
    return {}


def run_as(s: dict, cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=s["dir"], stdin=subprocess.DEVNULL, text=True,
                          capture_output=True, **as_user_kw(s))


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return "\n".join(f"    {line}" for line in text) or f"(empty log {path})"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def pid_is(pid: int, comm_prefix: str) -> bool:
    """Alive AND the expected program: after a reboot or in a container a stale pid file
    often names a live but unrelated process (pids restart from 1)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith(comm_prefix)
    except OSError:
        return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def make_private_dir(s: dict) -> None:
    u, base = s["user"], s["dir"]
    for d in (base, s["pg_socket_dir"], s["redis_dir"]):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if base.stat().st_uid != u.pw_uid:  # e.g. first created by a non-root run
            for root, dirs, files in os.walk(base):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, u.pw_uid, u.pw_gid)
    elif base.stat().st_uid != os.geteuid():
        raise ServiceError(f"{base} belongs to uid {base.stat().st_uid} (made by a root run?): "
                           "run this as root, or set SVCTRACE_SERVICES_DIR elsewhere")
    os.chmod(base, 0o700)


def wait_until(ready, alive, timeout: float, name: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise ServiceError(f"{name} exited during start-up; last lines of {log}:\n"
                               f"{tail(log)}")
        time.sleep(0.2)
    raise ServiceError(f"{name} did not accept connections within {timeout:.0f}s; "
                       f"last lines of {log}:\n{tail(log)}")


# ---------------------------------------------------------------- postgres

def pg_pid(s: dict) -> int | None:
    pid = read_pid(s["pg_data"] / "postmaster.pid")
    return pid if pid and pid_is(pid, "postgres") else None


def pg_running_port(s: dict) -> int | None:
    try:  # postmaster.pid line 4 is the port the server listens on
        return int((s["pg_data"] / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return None


def debian_socket_dir_usable(s: dict) -> bool:
    d, u = DEBIAN_SOCKET_DIR, s["user"]
    if not d.is_dir():
        return False
    if os.geteuid() != 0:
        return os.access(d, os.W_OK | os.X_OK)
    st = d.stat()
    return (st.st_uid == u.pw_uid and st.st_mode & 0o300 == 0o300) or \
        (st.st_gid == u.pw_gid and st.st_mode & 0o030 == 0o030) or st.st_mode & 0o003 == 0o003


def remove_stale_locks(s: dict, socket_dirs: list[Path]) -> None:
    """Postgres trusts any live pid in its lock files; drop those naming no postgres."""
    for lock in [s["pg_data"] / "postmaster.pid",
                 *(d / f".s.PGSQL.{s['pg_port']}.lock" for d in socket_dirs)]:
        pid = read_pid(lock)
        if lock.exists() and not (pid and pid_is(pid, "postgres")):
            lock.unlink()


def pg_ready(s: dict, host: str) -> bool:
    return run_as(s, [pg_bin("pg_isready"), "-q", "-h", host, "-p", str(s["pg_port"]),
                      "-U", DB, "-d", "postgres"]).returncode == 0


def pg_start(s: dict) -> str:
    data = s["pg_data"]
    if pg_pid(s):
        running = pg_running_port(s)
        if running != s["pg_port"]:
            raise ServiceError(f"postgres in {data} already runs on port {running}, not "
                               f"{s['pg_port']}: run `services.py stop` first")
        return f"postgres already running (pid {pg_pid(s)}, port {s['pg_port']})"
    if port_open(s["pg_port"]):
        raise ServiceError(f"port {s['pg_port']} on 127.0.0.1 is taken by another server "
                           f"(not the svctrace postgres in {data}): stop it (Debian's own "
                           "cluster: `pg_ctlcluster 15 main stop`) or set SVCTRACE_PG_PORT")
    if not (data / "PG_VERSION").exists():
        # --auth=trust: local and loopback-host connections need no password (test data only).
        check(run_as(s, [pg_bin("initdb"), "-D", str(data), "-U", DB, "--auth=trust",
                         "-E", "UTF8", "--locale=C"]), "initdb")
        with open(data / "postgresql.conf", "a") as f:
            f.write("\ninclude_if_exists = 'svctrace.conf'\n")
    socket_dirs = [s["pg_socket_dir"]]
    if debian_socket_dir_usable(s):
        # psycopg2/libpq with no host connect to /var/run/postgresql/.s.PGSQL.5432.
        socket_dirs.append(DEBIAN_SOCKET_DIR)
    remove_stale_locks(s, socket_dirs)
    # Rewritten at every start so a changed port takes effect; fsync off: throwaway data.
    conf = {"listen_addresses": "127.0.0.1", "port": s["pg_port"],
            "unix_socket_directories": ",".join(map(str, socket_dirs)),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    (data / "svctrace.conf").write_text(
        "".join(f"{k} = '{v}'\n" for k, v in conf.items()))
    # pg_ctl -w waits for "ready" in postmaster.pid and notices a postmaster that died.
    started = run_as(s, [pg_bin("pg_ctl"), "-D", str(data), "-l", str(s["pg_log"]), "-w",
                         "-t", str(int(s["timeout"])), "start"])
    if started.returncode != 0:
        raise ServiceError(f"postgres did not start and accept connections within "
                           f"{s['timeout']:.0f}s; last lines of {s['pg_log']}:\n"
                           f"{tail(s['pg_log'])}")
    wait_until(lambda: pg_ready(s, "127.0.0.1") and pg_ready(s, str(s["pg_socket_dir"])),
               lambda: pg_pid(s) is not None, s["timeout"], "postgres", s["pg_log"])
    psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(s["pg_port"]), "-U", DB,
            "-d", "postgres", "-tAc"]
    exists = run_as(s, psql + [f"SELECT 1 FROM pg_database WHERE datname = '{DB}'"])
    check(exists, "psql")
    if exists.stdout.strip() != "1":
        check(run_as(s, psql + [f'CREATE DATABASE "{DB}"']), "creating database svctrace")
    return f"postgres started (pid {pg_pid(s)}, 127.0.0.1:{s['pg_port']}, " \
           f"sockets in {', '.join(map(str, socket_dirs))})"


def pg_stop(s: dict) -> str:
    if not pg_pid(s):
        return "postgres not running"
    check(run_as(s, [pg_bin("pg_ctl"), "-D", str(s["pg_data"]), "-m", "fast", "-w",
                     "-t", str(int(s["timeout"])), "stop"]), "pg_ctl stop")
    return "postgres stopped"


# ---------------------------------------------------------------- redis

def redis_pid(s: dict) -> int | None:
    pid = read_pid(s["redis_pid"])
    return pid if pid and pid_is(pid, "redis-server") else None


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
            c.sendall(b"PING\r\n")
            return c.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_start(s: dict) -> str:
    if redis_pid(s):
        return f"redis already running (pid {redis_pid(s)}, port {s['redis_port']})"
    if port_open(s["redis_port"]):
        raise ServiceError(f"port {s['redis_port']} on 127.0.0.1 is taken by another server "
                           f"(not the svctrace redis in {s['redis_dir']}): stop it "
                           "(`service redis-server stop`) or set SVCTRACE_REDIS_PORT")
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(server, os.X_OK):
        raise ServiceError("redis-server was not found: run scripts/setup.sh")
    s["redis_pid"].unlink(missing_ok=True)  # stale: names no live redis-server
    # Not --daemonize: keeping the child's handle lets the wait notice an early exit
    # (e.g. bind refused). Its own session keeps it alive after this script returns.
    # No persistence (save "", appendonly no): test data is throwaway.
    with open(s["redis_log"], "ab") as log:
        proc = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(s["redis_port"]),
             "--dir", str(s["redis_dir"]), "--pidfile", str(s["redis_pid"]),
             "--save", "", "--appendonly", "no"],
            cwd=s["dir"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, **as_user_kw(s))
    wait_until(lambda: redis_ping(s["redis_port"]), lambda: proc.poll() is None,
               s["timeout"], "redis", s["redis_log"])
    return f"redis started (pid {redis_pid(s)}, 127.0.0.1:{s['redis_port']})"


def redis_stop(s: dict) -> str:
    pid = redis_pid(s)
    if not pid:
        return "redis not running"
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise ServiceError(f"redis (pid {pid}) belongs to another user: stop it as root") from None
    deadline = time.monotonic() + s["timeout"]
    while pid_is(pid, "redis-server"):
        if time.monotonic() > deadline:
            raise ServiceError(f"redis (pid {pid}) did not exit within {s['timeout']:.0f}s")
        time.sleep(0.1)
    return "redis stopped"


# ---------------------------------------------------------------- commands

def locked(s: dict):
    """Serialize start/stop: pytest-xdist workers may all call `start` at once."""
    lock = open(s["dir"] / ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock  # closing it releases the lock


def cmd_start(s: dict, args) -> int:
    if s["dir"] != REPO / ".services" and not os.environ.get("SVCTRACE_SERVICES_DIR"):
        print(f"note: using {s['dir']}: {s['user'].pw_name} cannot reach {REPO} "
              "or its socket path would be too long")
    make_private_dir(s)
    with locked(s):
        print(pg_start(s))
        print(redis_start(s))
    return 0


def cmd_stop(s: dict, args) -> int:
    if s["dir"].exists():
        with locked(s):
            print(pg_stop(s))
            print(redis_stop(s))
    return 0


def cmd_status(s: dict, args) -> int:
    pg, rd = pg_pid(s), redis_pid(s)
    print(f"postgres: {'running, pid %d, port %s' % (pg, pg_running_port(s)) if pg else 'stopped'}")
    print(f"redis: {'running, pid %d, port %d' % (rd, s['redis_port']) if rd else 'stopped'}")
    print(f"data: {s['dir']}")
    return 0 if pg and rd else 3  # 3 = "not running", as pg_ctl status and LSB use


def cmd_env(s: dict, args) -> int:
    env = public_env(s)
    if args.json:
        print(json.dumps(env))
    else:
        print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "status"):
        sub.add_parser(name)
    sub.add_parser("env").add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        s = settings()
        return {"start": cmd_start, "stop": cmd_stop, "status": cmd_status,
                "env": cmd_env}[args.command](s, args)
    except ServiceError as e:
        print(f"services.py {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
