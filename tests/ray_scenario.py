"""A lost Ray worker node, for real: run as ``python ray_scenario.py WORK DATA`` inside
``unshare -rn --pid --fork --mount-proc`` (see ``test_ray_cluster.py``).

The private network namespace holds only the loopback interface, so every Ray port binds to
127.0.0.1 and nothing is reachable from outside; the private PID namespace means ``ray stop``
sees only this cluster, and the kernel ends every process of it when this script exits.

Steps: a head node without CPUs (it runs no cells) and worker node A (one CPU, its own temp
dir); ``resablate grid --executor ray`` with two cells, one whose weights file is broken (it
raises) and one checkpointing every 5 steps; as soon as
the first checkpoint exists, every process of node A is SIGKILLed; worker node B joins; the grid
must finish. Then node P joins with a private view of the grid's folder (a tmpfs mounted over it
in its own mount namespace: no shared storage) and a second grid must be refused at start.
Prints one JSON line: the drivers' exit codes and output, the checkpoint present at the kill,
whether the cell had already finished then, and how many processes were killed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 6391
ADDRESS = f"127.0.0.1:{PORT}"
_RAY = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring up ``lo``: a new network namespace starts with it down (and nothing else)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def ray(*args: str, wrapper: tuple[str, ...] = ()) -> None:
    command = [*wrapper, sys.executable, "-c", _RAY, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process this PID namespace shows."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it has exited meanwhile
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        found[int(entry.name)] = (parent, cmdline)
    return found


def node_processes(temp_dir: Path) -> list[int]:
    """Every process of the node whose temp dir is ``temp_dir``: its raylet and daemons (the
    temp dir is on their command line) and all their descendants (the Ray workers)."""
    table = _processes()
    chosen = {pid for pid, (_, cmdline) in table.items() if str(temp_dir) in cmdline}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in chosen}
        grew = not children <= chosen
        chosen |= children
    return sorted(chosen)


def main(work: Path, data: Path) -> dict[str, object]:
    loopback_up()
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
    )
    # Ray's socket paths must stay short (a Unix socket path has at most 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head, node_a, node_b, node_p = (temp / name for name in ("head", "a", "b", "p"))
    common = ("--node-ip-address", "127.0.0.1", "--disable-usage-stats")
    ray(
        "start",
        "--head",
        "--port",
        str(PORT),
        "--num-cpus",
        "0",
        "--temp-dir",
        str(head),
        "--include-dashboard",
        "false",
        *common,
    )
    ray("start", "--address", ADDRESS, "--num-cpus", "1", "--temp-dir", str(node_a), *common)
    out = work / "shared" / "grid"
    broken = work / "broken.pth"  # a cell with these weights raises: failed at once, no retry
    broken.write_bytes(b"not a weights file")
    args = [
        *("grid", "--depths", "18", "--residual", "on", "--weights", "none", str(broken)),
        *("--data", str(data), "--recipe", "demo", "--max-steps", "60", "--image-size", "16"),
        *("--batch-size", "4", "--set", "checkpoint_every=5", "--set", "eval_every=20"),
        *("--executor", "ray", "--ray-address", ADDRESS, "--out", str(out)),
    ]
    log = (work / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "resablate_cli", *args], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 400
        while not list(out.glob("cells/*/checkpoints/step-*.pt")):
            if driver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the cell never wrote a checkpoint")
            time.sleep(0.05)
        at_kill = sorted(p.name for p in out.glob("cells/*/checkpoints/step-*.pt"))
        finished_before = bool(list(out.glob("cells/*/result.json")))
        victims = node_processes(node_a)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        ray("start", "--address", ADDRESS, "--num-cpus", "1", "--temp-dir", str(node_b), *common)
        code = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
        # Node P sees its own empty tmpfs where the grid's folder is: no shared storage.
        private = f'mount -t tmpfs tmpfs {shlex.quote(str(work / "shared"))} && exec "$@"'
        start_p = ("start", "--address", ADDRESS, "--num-cpus", "1", "--temp-dir", str(node_p))
        ray(*start_p, *common, wrapper=("unshare", "-m", "sh", "-c", private, "sh"))
        args[args.index(str(out))] = str(out.with_name("grid2"))
        refused = subprocess.run(
            [sys.executable, "-m", "resablate_cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return {
            "driver_exit": code,
            "driver_output": (work / "driver.log").read_text(),
            "checkpoints_at_kill": at_kill,
            "finished_before_kill": finished_before,
            "killed": len(victims),
            "private_exit": refused.returncode,
            "private_stderr": refused.stderr,
        }
    finally:
        if driver.poll() is None:
            driver.kill()
        subprocess.run([sys.executable, "-c", _RAY, "stop", "--force"], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
