"""The ``backlens`` entry point, and the resident process that answers a command's second call.

Why: on 2 CPU cores ``backlens explain`` spends about 4.5 s importing torch, pandas and
transformers (whose masking utilities pull in torch._dynamo and torch.distributed) before any
work, while the model itself loads in about 1 s from the cache folder. So the first command runs
in its own process as before and then starts a server in the background; later commands send
their arguments to it over a Unix socket and print what it writes back. The server keeps only
its imported modules: every command loads its model again (from the cache), so no weights, edits
or settings pass from one command to the next. It exits after ``BACKLENS_SERVER_IDLE`` seconds
without a command (default 900).

One server per (Python, installed backlens files, environment): a changed install or a different
``BACKLENS_*``/``HF_*``/thread setting starts its own. Off with ``BACKLENS_SERVER=off`` (or
``BACKLENS_CACHE=off``); ``--verbose`` always runs in its own process (logs and tracebacks in
full). ``backlens server status|stop`` shows or stops this environment's server.

Only the standard library is imported at module level: this runs before any command's imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVED = ("explain", "edit", "trace")
SERVER_ENV, IDLE_ENV, DIR_ENV = "BACKLENS_SERVER", "BACKLENS_SERVER_IDLE", "BACKLENS_SERVER_DIR"
DEFAULT_IDLE_S = 900.0
ACCEPT_WAIT_S = 120.0  # a busy or still-importing server; after this the command runs here instead
_OFF = {"off", "0", "false", "no", "none"}
# The environment a command's result can depend on (caches, data, devices, threads): part of the key.
_KEYED_ENV = ("BACKLENS_", "HF_", "TRANSFORMERS_", "TORCH", "CUDA_", "OMP_", "MKL_", "PYTHON", "XDG_CACHE_HOME")


def enabled() -> bool:
    from backlens.cache import CACHE_ENV

    return hasattr(socket, "AF_UNIX") and not any(
        os.environ.get(name, "").strip().lower() in _OFF for name in (SERVER_ENV, CACHE_ENV))


def socket_path() -> Path | None:
    """``<dir>/<key>.sock``; dir: ``$BACKLENS_SERVER_DIR``, else ``$XDG_RUNTIME_DIR/backlens``, else
    ``/tmp/backlens-<uid>`` (short: a socket's path is limited to about 100 bytes). None when that
    folder belongs to another user or others may write to it: no server then."""
    import backlens

    package = Path(backlens.__file__).resolve().parent
    files = sorted((str(path.relative_to(package)), stat.st_mtime_ns, stat.st_size)
                   for path in package.rglob("*") if path.suffix in (".py", ".yaml") for stat in [path.stat()])
    environment = sorted((name, value) for name, value in os.environ.items()
                         if name.startswith(_KEYED_ENV) and name not in (SERVER_ENV, IDLE_ENV, DIR_ENV))
    key = hashlib.sha256(json.dumps([os.path.realpath(sys.executable), sys.prefix, str(package), files,
                                     environment]).encode()).hexdigest()[:20]
    folder = os.environ.get(DIR_ENV) or (Path(os.environ["XDG_RUNTIME_DIR"]) / "backlens"
                                          if os.environ.get("XDG_RUNTIME_DIR") else f"/tmp/backlens-{os.getuid()}")
    folder = Path(folder)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = folder.stat()
    except OSError:  # not creatable here: every command runs in its own process
        return None
    if mode.st_uid != os.getuid() or mode.st_mode & 0o022:
        return None
    return folder / f"{key}.sock"


def _send(connection: socket.socket, message: dict) -> None:
    connection.sendall((json.dumps(message) + "\n").encode())


def _connect(path: Path, timeout: float | None) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(str(path))
    except OSError:
        client.close()
        return None
    return client


def run_on_server(path: Path | None, argv: list[str]) -> int | None:
    """The command's exit status as the server ran it, or None when no server took it (run it here)."""
    client = None if path is None else _connect(path, ACCEPT_WAIT_S)
    if client is None:
        return None
    with client:
        try:
            _send(client, {"argv": argv, "cwd": os.getcwd(), "columns": shutil.get_terminal_size().columns})
            replies = client.makefile("r", encoding="utf-8")
            if not replies.readline():  # the server's acceptance; nothing: it went away before running it
                return None
        except OSError:
            return None
        client.settimeout(None)
        for line in replies:
            reply = json.loads(line)
            if "exit" in reply:
                return int(reply["exit"])
            stream = sys.stdout if reply["stream"] == "out" else sys.stderr
            stream.write(reply["text"])
            stream.flush()
    print("error: the backlens server stopped during the command; run it again with BACKLENS_SERVER=off",
          file=sys.stderr)
    return 1


def start_server(path: Path, environment: dict[str, str]) -> None:
    """Start the server at ``path`` in the background, in the environment the command started with
    (not the one its imports changed); it exits at once if another got there first."""
    with open(path.with_suffix(".log"), "a") as log:
        subprocess.Popen([sys.executable, "-m", "backlens.commands.resident", "serve", str(path)], env=environment,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)


class _Stream:
    """sys.stdout / sys.stderr of one command on the server: each write goes to the client."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, connection: socket.socket, name: str) -> None:
        self.connection, self.name = connection, name

    def write(self, text: str) -> int:
        if text:
            _send(self.connection, {"stream": self.name, "text": text})
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("a backlens server stream has no file descriptor")


def _run_one(connection: socket.socket, request: dict, command) -> None:
    """One client's command with its cwd and terminal width, its output sent back, then the server's
    own state (cwd, streams, threads, logging, figures) as before."""
    import logging

    import torch

    try:
        _send(connection, {"accepted": True})
    except OSError:  # the client stopped waiting (ACCEPT_WAIT_S) and ran the command itself
        return
    saved = (sys.stdout, sys.stderr, os.getcwd(), torch.get_num_threads(), os.environ.get("COLUMNS"))
    root = logging.getLogger()
    try:
        sys.stdout, sys.stderr = _Stream(connection, "out"), _Stream(connection, "err")
        os.chdir(request["cwd"])
        os.environ["COLUMNS"] = str(request["columns"])
        for handler in root.handlers[:]:
            root.removeHandler(handler)  # main() sets logging up again on this command's stderr
        try:
            status = command(request["argv"])
        except SystemExit as stop:  # argparse: --help, a bad option
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
        except BrokenPipeError:
            return  # the client went away (Ctrl-C)
        except BaseException:  # noqa: BLE001 - the client shows the traceback; the server goes on
            import traceback

            traceback.print_exc()
            status = 1
        _send(connection, {"exit": int(status or 0)})
    except OSError:
        pass  # the client went away; nothing left to tell it
    finally:
        sys.stdout, sys.stderr = saved[0], saved[1]
        os.chdir(saved[2])
        torch.set_num_threads(saved[3])
        if saved[4] is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved[4]
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


def serve(path: Path, idle_s: float) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError:
        alive = _connect(path, 5.0)
        if alive is not None:  # another server of this key got there first
            alive.close()
            return
        path.unlink(missing_ok=True)  # left by a server that was killed
        listener.bind(str(path))
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    # Listening before the imports: a command arriving meanwhile waits for this server instead of
    # starting a second one.
    listener.listen(16)
    from backlens.commands.main import main  # the imports a command pays, paid once here
    import backlens.api.editing  # noqa: F401
    import backlens.api.lens  # noqa: F401
    import backlens.api.tracing  # noqa: F401

    listener.settimeout(idle_s)
    print(f"{time.strftime('%F %T')} serving {path} (pid {os.getpid()}, exits after {idle_s:g} s idle)", flush=True)
    try:
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                print(f"{time.strftime('%F %T')} idle for {idle_s:g} s: exiting", flush=True)
                return
            with connection:
                connection.settimeout(None)
                try:
                    request = json.loads(connection.makefile("r", encoding="utf-8").readline() or "null")
                except (OSError, ValueError):
                    continue
                if request and request.get("stop"):
                    print(f"{time.strftime('%F %T')} stopped by backlens server stop", flush=True)
                    _send(connection, {"exit": 0})
                    return
                if request:
                    started = time.perf_counter()
                    _run_one(connection, request, main)
                    print(f"{time.strftime('%F %T')} served {' '.join(request['argv'][:1])} in "
                          f"{time.perf_counter() - started:.2f} s", flush=True)
    finally:
        listener.close()
        if path.exists() and path.stat().st_ino == inode:
            path.unlink()


def server_command(argv: list[str]) -> int:
    """``backlens server status|stop``."""
    if argv not in (["status"], ["stop"]):
        print("usage: backlens server status|stop", file=sys.stderr)
        return 2
    path = socket_path() if enabled() else None
    if path is None:
        print("no backlens server: BACKLENS_SERVER or BACKLENS_CACHE is off, or the socket folder is not yours alone")
        return 0
    client = _connect(path, 5.0)
    if client is None:
        print(f"no backlens server for this environment ({path})")
        return 0
    with client:
        if argv == ["status"]:
            print(f"backlens server running: {path} (log {path.with_suffix('.log')})")
            return 0
        try:  # after the command it is running, if any
            client.settimeout(None)
            _send(client, {"stop": True})
            client.makefile("r", encoding="utf-8").readline()
        except OSError:
            pass
    print(f"stopped the backlens server ({path})")
    return 0


def console() -> None:
    """Entry point of the ``backlens`` script and ``python -m backlens``."""
    argv = sys.argv[1:]
    if argv[:1] == ["server"]:
        sys.exit(server_command(argv[1:]))
    served = argv[:1] and argv[0] in SERVED and not {"-v", "--verbose"} & set(argv) and enabled()
    if served:
        # Keyed on the environment as the user gave it: the command's imports set variables of their own.
        path, environment = socket_path(), dict(os.environ)
        status = run_on_server(path, argv)
        if status is not None:
            sys.exit(status)
    from backlens.commands.main import main

    status = main(argv)
    if served and path is not None:
        start_server(path, environment)
    sys.exit(status)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        idle = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
        serve(Path(sys.argv[2]), idle)
    else:
        console()
