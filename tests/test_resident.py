"""The resident ``backlens`` process (backlens.commands.resident): the first command runs in its own
process and starts a server; later commands are answered by it with the same output, their files
written where the user ran them, errors still one line and exit 1; ``server stop`` and the idle
timeout end it; a socket left by a killed server is replaced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backlens.commands import resident
from conftest import PROJECT_ROOT, require_shared

EXPLAIN = ["explain", "Obama grew up in", " Paris", "--model", "tiny-llama", "--layers", "1-2"]


@pytest.fixture
def server_env(tmp_path):
    require_shared("assets", "gpt2_tokenizer")
    folder = Path("/tmp") / f"bl-test-{os.getpid()}-{tmp_path.name[-12:]}"  # a socket path is short
    environment = {**os.environ, "BACKLENS_SERVER": "on", "BACKLENS_SERVER_DIR": str(folder),
                   "PYTHONPATH": f"{PROJECT_ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    yield environment
    backlens(environment, ["server", "stop"], tmp_path)
    for path in folder.glob("*"):
        path.unlink()
    folder.rmdir()


def backlens(environment: dict, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backlens", *argv], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=600, check=False)


def server_log(environment: dict) -> str:
    logs = list(Path(environment["BACKLENS_SERVER_DIR"]).glob("*.log"))
    return "".join(path.read_text() for path in logs)


def wait_for(condition, seconds: float = 120.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_second_command_is_served_with_the_same_output(server_env, tmp_path):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first = backlens(server_env, [*EXPLAIN, "--csv", "t.csv"], first_dir)
    assert first.returncode == 0, first.stderr
    assert wait_for(lambda: "serving" in server_log(server_env)), server_log(server_env)
    second = backlens(server_env, [*EXPLAIN, "--csv", "t.csv"], second_dir)
    assert second.returncode == 0, second.stderr
    assert "served explain" in server_log(server_env)
    assert second.stdout == first.stdout
    assert (second_dir / "t.csv").read_bytes() == (first_dir / "t.csv").read_bytes()  # in the client's folder
    error = backlens(server_env, ["explain", "Obama grew up in", "", "--model", "tiny-llama"], tmp_path)
    assert error.returncode == 1
    assert error.stderr.splitlines()[-1].startswith("error: target '' tokenizes to nothing")
    assert server_log(server_env).count("served explain") == 2
    usage = backlens(server_env, ["explain"], tmp_path)  # argparse's exit, through the server
    assert usage.returncode == 2 and "required: prompt, target" in usage.stderr
    stopped = backlens(server_env, ["server", "stop"], tmp_path)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert wait_for(lambda: "stopped by backlens server stop" in server_log(server_env), 30)
    assert "no backlens server" in backlens(server_env, ["server", "status"], tmp_path).stdout


def test_idle_timeout_and_a_stale_socket(server_env, tmp_path):
    folder = Path(server_env["BACKLENS_SERVER_DIR"])
    folder.mkdir(mode=0o700)
    path = folder / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening, then closed: what a killed server leaves
    stale.close()
    assert resident.run_on_server(path, EXPLAIN) is None  # nobody answers: the command runs in-process
    server = subprocess.Popen([sys.executable, "-m", "backlens.commands.resident", "serve", str(path)],
                              env={**server_env, "BACKLENS_SERVER_IDLE": "1"}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = server.communicate(timeout=600)
    assert server.returncode == 0, output
    assert "serving" in output and "idle for 1 s: exiting" in output
    assert not path.exists()


def test_off_and_verbose_run_in_process(monkeypatch, tmp_path, capsys):
    require_shared("assets", "gpt2_tokenizer")
    monkeypatch.setenv("BACKLENS_SERVER", "off")
    assert not resident.enabled()
    monkeypatch.setenv("BACKLENS_SERVER", "on")
    assert resident.enabled()
    monkeypatch.setenv("BACKLENS_CACHE", "off")  # no cache folder: no server either
    assert not resident.enabled()
    monkeypatch.setenv("BACKLENS_CACHE", str(tmp_path))
    monkeypatch.setenv("BACKLENS_SERVER_DIR", str(tmp_path))
    asked, started = [], []
    monkeypatch.setattr(resident, "run_on_server", lambda path, argv: asked.append(argv))  # no server: None
    monkeypatch.setattr(resident, "start_server", lambda *args: started.append(args))
    tiny = ["explain", "Obama grew up in", " Paris", "--model", "tiny-gpt2", "--layers", "1", "--last"]
    for argv, served in ((tiny, True), ([*tiny, "--verbose"], False)):
        monkeypatch.setattr(sys, "argv", ["backlens", *argv])
        with pytest.raises(SystemExit) as stop:
            resident.console()
        assert stop.value.code == 0
        assert "' Paris'" in capsys.readouterr().out  # ran here
        assert (asked, len(started)) == (([argv], 1) if served else ([tiny], 1))


def test_the_key_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKLENS_SERVER_DIR", str(tmp_path))
    base = resident.socket_path()
    assert base.parent == tmp_path and resident.socket_path() == base
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resident.socket_path() != base
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("BACKLENS_SERVER_IDLE", "5")  # the server's own settings are not part of the key
    assert resident.socket_path() == base


def test_no_server_in_a_folder_others_can_write(monkeypatch, tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv("BACKLENS_SERVER_DIR", str(folder))
    assert resident.socket_path() is None
    assert resident.run_on_server(None, EXPLAIN) is None


def test_a_client_that_stopped_waiting_does_not_stop_the_server(tmp_path):
    """A command that gave up waiting (ACCEPT_WAIT_S) closed its socket; the server reading its request
    later must skip it, not fail."""
    server_side, client_side = socket.socketpair()
    client_side.close()
    resident._run_one(server_side, {"argv": ["explain"], "cwd": str(tmp_path), "columns": 80},
                      lambda argv: pytest.fail("ran a command nobody waits for"))
    server_side.close()


def test_no_server_where_its_folder_cannot_be_made(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("BACKLENS_SERVER_DIR", str(blocker / "sub"))
    assert resident.socket_path() is None
