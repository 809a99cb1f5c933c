"""Real clusters on this machine for the tests: a single-node SLURM (munged, slurmctld, slurmd from Debian's
packages, no systemd) and a Ray cluster of separate `ray start` processes. Configuration, state, sockets, logs
and ports live under one temporary folder; `stop()` ends every process the cluster started, found by the
marker its environment carries (the daemons' children, job steps and Ray workers included)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "srun")
SLURM_INSTALL = ("SLURM is not installed: sudo apt-get install -y --no-install-recommends slurmctld slurmd "
                 "slurm-client munge (or bash scripts/install-slurm.sh as root)")
MARKER = "HARNESS_TEST_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_slurm() -> str | None:
    """One line saying how to install SLURM when a program is missing (None when all are there)."""
    paths = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    gone = [p for p in SLURM_PROGRAMS if shutil.which(p, path=paths) is None]
    return f"{SLURM_INSTALL} (missing: {', '.join(gone)})" if gone else None


def marked_pids(token: str) -> list[int]:
    """Processes whose environment carries MARKER=token."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_marked(token: str, grace: float = 5.0) -> None:
    """SIGTERM every process carrying the marker, SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked_pids(token)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while any(alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
    left = [p for p in marked_pids(token) if alive(p)]
    assert not left, f"cluster processes still alive: {left}"


def wait_until(check, seconds: float, what: str, every: float = 0.2):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


# ---- what the tests read ------------------------------------------------------------------------------------
class Output:
    """A process's output, read as it comes (so that a test can wait for a line)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, seconds: float = 300) -> None:
        wait_until(lambda: re.search(pattern, self.text()) or self.proc.poll() is not None, seconds, pattern)
        assert re.search(pattern, self.text()), self.text()[-3000:]

    def finish(self, seconds: float = 600) -> int:
        code = self.proc.wait(timeout=seconds)
        self.thread.join(timeout=10)
        return code


def records(tmp: Path) -> list[dict]:
    folder = tmp / "results" / "records"
    return [r for r in map(json.loads, (p.read_text() for p in sorted(folder.glob("*.json"))))
            if r["source"] == "harness"]


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in rows]


# ---- SLURM ---------------------------------------------------------------------------------------------------
SACCT = """#!/bin/sh
# sacct stand-in (no slurmdbd here): JobID|State|NodeList from squeue, which submitit's status calls read
echo 'JobID|State|NodeList'
squeue -h -t all -o '%i|%T|%N'
"""


class Slurm:
    """munged + slurmctld + slurmd under a fresh folder in /tmp (munged wants every folder above its socket
    enterable by all, which pytest's own temporary folders are not); `env` is what sbatch, squeue, scontrol and
    submitters need."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="harness-slurm-"))
        self.root.chmod(0o755)
        self.token = secrets.token_hex(8)
        self.conf = self.root / "slurm.conf"
        bin_dir = self.root / "bin"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=f"{bin_dir}:{os.environ['PATH']}:/usr/sbin",
                        **{MARKER: self.token})

    def _write_config(self) -> None:
        d = self.root
        for sub in ("state", "spool", "log", "run", "bin"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        munge = d / "munge"
        munge.mkdir(mode=0o755, exist_ok=True)
        munge.chmod(0o755)  # munged refuses a socket folder others cannot enter
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        sacct = d / "bin" / "sacct"
        sacct.write_text(SACCT)
        sacct.chmod(0o755)
        host = socket.gethostname().split(".")[0]
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, env=self.env).stdout.splitlines()[0]
        fields = dict(kv.split("=", 1) for kv in node.split())
        memory = int(int(fields["RealMemory"]) * 0.9)
        node_line = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("NodeName", "RealMemory"))
        self.conf.write_text("\n".join([
            "ClusterName=harness", f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={munge / 'munge.sock'},cred_expire=10",
            f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
            "MailProg=/bin/true", "SchedulerType=sched/backfill",
            "SchedulerParameters=bf_interval=1,sched_interval=1", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "ReturnToService=2", "KillWait=5", "MinJobAge=600",
            f"NodeName={host} NodeAddr=127.0.0.1 {node_line} RealMemory={memory} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self) -> "Slurm":
        self._write_config()
        d, munge = self.root, self.root / "munge"
        self._run(["munged", f"--key-file={munge / 'munge.key'}", f"--socket={munge / 'munge.sock'}",
                   f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                   f"--seed-file={munge / 'munged.seed'}"])
        self._run(["slurmctld", "-c", "-f", str(self.conf)])
        self._run(["slurmd", "-f", str(self.conf)])
        wait_until(lambda: self.sinfo() == "idle", 60, f"the SLURM node to be idle (logs in {d / 'log'})", 0.3)
        return self

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(f"{argv[0]} failed to start: {proc.stderr.strip() or proc.stdout.strip()}")

    def sinfo(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.stdout.strip()

    def command(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld knows (finished ones for MinJobAge): id -> name, state, restarts."""
        out = self.command("squeue", "-h", "-t", "all", "-o", "%i|%j|%T")
        jobs = {}
        for line in out.splitlines():
            jid, name, state = line.split("|")
            jobs[jid] = {"name": name, "state": state}
        return jobs

    def stop(self) -> None:
        try:
            stop_marked(self.token)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- Ray -----------------------------------------------------------------------------------------------------
class RayCluster:
    """`ray start --head` plus one `ray start --address` worker node (with the custom resource `worker`), each a
    separate set of processes; `node_pids(role)` finds one node's processes to kill it."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root, self.cpus = root, cpus
        self.token = secrets.token_hex(8)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray = str(Path(sys.executable).with_name("ray"))
        # its own token (not ~/.ray's, which a local `ray.init` elsewhere may create): drivers need `env` too
        # workers run this checkout's code
        root = str(Path(__file__).resolve().parents[1])
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0",
                        PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))

    def _env(self, role: str) -> dict[str, str]:
        return dict(self.env, **{MARKER: self.token, f"{MARKER}_ROLE": role})

    def start(self) -> "RayCluster":
        common = ["--num-cpus", str(self.cpus), "--num-gpus", "0", "--object-store-memory", str(200 * 2**20),
                  "--disable-usage-stats"]
        self._ray_start(["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", "--include-dashboard=false",
                         f"--temp-dir={self.root}", *common], "head")
        self._ray_start([f"--address={self.address}", "--node-ip-address=127.0.0.1", "--resources",
                         '{"worker": 1}', *common], "worker")
        return self

    def _ray_start(self, args: list[str], role: str) -> None:
        proc = subprocess.run([self.ray, "start", *args], env=self._env(role), capture_output=True, text=True,
                              timeout=180)
        if proc.returncode:
            raise RuntimeError(f"ray start ({role}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def node_pids(self, role: str) -> list[int]:
        needle = f"{MARKER}_ROLE={role}".encode()
        pids = []
        for pid in marked_pids(self.token):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pids.append(pid)
            except OSError:
                pass
        return pids

    def node_id(self, role: str) -> str:
        """The Ray node id of the head or the worker (from its raylet's command line)."""
        for pid in self.node_pids(role):
            try:
                found = re.search(rb"--node_id=([0-9a-f]+)", Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
            if found:
                return found.group(1).decode()
        raise AssertionError(f"no raylet found for the {role} node")

    def kill_node(self, role: str) -> list[int]:
        pids = self.node_pids(role)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop(self) -> None:
        stop_marked(self.token)
