"""The entry points re-execute themselves with glibc's huge-page tunable: same pid, same arguments, once."""
import os
import subprocess
import sys

import pytest

# Imports only the standalone module (not the package, which imports jax), twice over an exec.
_CHILD = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("huge_pages", sys.argv[1])
huge_pages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(huge_pages)
print("before", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[2:])
huge_pages.reexec_with_huge_pages()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[2:])
"""
_MODULE = os.path.join(os.path.dirname(__file__), "..", "flextok_jax", "huge_pages.py")


def _run_child(env_update: dict) -> list[list[str]]:
    # Without PYTHONUNBUFFERED the pipe is block-buffered, so a missing flush before the exec shows.
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PYTHONUNBUFFERED")}
    env.update(env_update)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, _MODULE, "--flag=1", "x y"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return [line.split(" ", 3) for line in out.splitlines()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tunable is glibc's (Linux)")
def test_reexec_sets_the_tunable_keeps_pid_and_arguments_and_runs_once():
    lines = _run_child({})
    # The first run's output is flushed before the exec; the second run does not exec again.
    assert [line[0] for line in lines] == ["before", "before", "after"]
    pids = {line[1] for line in lines}
    assert len(pids) == 1, lines
    assert [line[2] for line in lines] == ["None", "glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=1"]
    assert {line[3] for line in lines} == {"['--flag=1', 'x y']"}


def test_a_set_variable_opts_out():
    lines = _run_child({"GLIBC_TUNABLES": ""})
    assert [(line[0], line[2]) for line in lines] == [("before", ""), ("after", "")]


_RECORD_START = """
import os
with open(os.environ["FLEXTOK_TEST_STARTS"], "a") as f:
    f.write(f"{os.getpid()} {os.environ.get('GLIBC_TUNABLES')}\\n")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tunable is glibc's (Linux)")
@pytest.mark.parametrize("command, help_text", [
    (["-m", "flextok_jax.main", "--helpshort"], "--workdir"),
    (["flextok", "--help"], "usage: "),  # the console script
    (["-m", "flextok_jax.benchmarks", "--help"], "usage: "),
])
def test_each_entry_point_restarts_once_with_the_tunable(tmp_path, command, help_text):
    # A sitecustomize records every interpreter start: its pid and GLIBC_TUNABLES.
    (tmp_path / "sitecustomize.py").write_text(_RECORD_START)
    starts = tmp_path / "starts.txt"
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=str(tmp_path), FLEXTOK_TEST_STARTS=str(starts))
    if command[0] == "flextok":
        command = [os.path.join(os.path.dirname(sys.executable), "flextok"), *command[1:]]
    else:
        command = [sys.executable, *command]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert help_text in proc.stdout, proc.stderr[-2000:]  # the restarted process ran the command
    lines = [line.split(" ", 1) for line in starts.read_text().splitlines()]
    assert len(lines) == 2 and lines[0][0] == lines[1][0], lines
    assert [value for _, value in lines] == ["None", "glibc.malloc.hugetlb=1"]
