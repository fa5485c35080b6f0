"""Stop exactly the processes a test started (by a marker in their command line, plus their children),
never the other Ray or Prefect processes on the machine (`ray stop` would kill them all)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path


def venv_executable(name: str) -> str:
    """A console script of the interpreter running the tests (hoi-factory, ray, prefect, moto_server)."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (parent, cmdline)
    return found


def kill_tree_by_marker(marker: str, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL, every process whose command line holds `marker`, and their descendants."""
    processes = _processes()
    targets = {pid for pid, (_, cmd) in processes.items() if marker in cmd and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in processes.items() if parent in targets} - targets
        grew = bool(children)
        targets |= children
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in targets):
            time.sleep(0.1)
    return len(targets)
