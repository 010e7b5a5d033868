"""A throw-away, single-node SLURM cluster on localhost, for tests and CI.

Why this exists: the workflow is meant to run on SLURM clusters through
``snakemake --profile profiles/slurm``. To test that path without a real cluster we start
the three daemons a cluster needs, all on this machine:

* ``munged``    -- MUNGE, the authentication service every SLURM message is signed with;
* ``slurmctld`` -- the controller (scheduler), which accepts ``sbatch`` and tracks jobs;
* ``slurmd``    -- the compute-node daemon, which actually runs the jobs.

Everything lives in one *work directory*: the config (``slurm.conf``), the MUNGE key, the
daemons' state, spool and log files. Two things live outside it, both removed by
:meth:`Cluster.stop`:

* ``/etc/slurm/slurm.conf``, a symlink to the work directory's config. Clients started by
  us get ``SLURM_CONF`` (see :meth:`Cluster.env`), but inside each job Snakemake's
  slurm-jobstep plugin (0.6.1) deletes every ``SLURM_*`` variable, ``SLURM_CONF``
  included, before it calls ``srun``; that ``srun`` then only finds the default path.
  So only one such cluster can run on a machine at a time. :func:`start` refuses to
  replace a ``/etc/slurm/slurm.conf`` it did not write (a real cluster's) and refuses to
  start while another cluster of ours is still running.
* the MUNGE socket: ``munged`` insists that every directory above its socket is
  world-searchable, which a pytest ``tmp_path`` (mode 0700) is not, and a UNIX socket
  path must be short, so the socket goes into a small directory under ``/tmp``.

The daemons use free ports picked at start, not SLURM's default 6817/6818, so a system
``slurmctld`` that happens to be installed and running does not collide with ours.

Python use::

    cluster = slurm_cluster.start(workdir)
    subprocess.run(["sbatch", ...], env=cluster.env())
    cluster.stop()

Shell use (``.ci/run``)::

    eval "$(python tests/slurm_cluster.py start DIR)"   # prints: export SLURM_CONF=...
    snakemake --profile profiles/slurm ...
    python tests/slurm_cluster.py stop DIR

``start`` writes the pids of the daemons it started to ``DIR/pids``; ``stop`` ends exactly
those pids (after checking each still runs the program we started, so a recycled pid is
never hit), cancels the cluster's jobs first and removes the MUNGE socket directory.

Requirements: root (``slurmd`` must run as root to start jobs) and the Debian packages
munge, slurmctld, slurmd and slurm-client (``scripts/install-debian-packages.sh``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Programs the cluster needs, and the Debian package that ships each of them.
REQUIRED_PROGRAMS = {
    "munged": "munge",
    "munge": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "squeue": "slurm-client",
    "sinfo": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
}

#: The partition jobs land in when they name none (``profiles/slurm`` names none).
PARTITION = "debug"
#: Name of the single compute node; slurmd is told to be this node with ``-N``.
NODE_NAME = "localhost"

#: Where SLURM clients look for their config when ``SLURM_CONF`` is unset (see above).
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
#: First line of every config we write; how we recognise our own files.
MARKER = "# Written by tests/slurm_cluster.py"

#: Seconds slurmctld keeps a finished job in memory, where ``squeue``/``scontrol`` see it.
#: The SLURM executor plugin, when told to use ``squeue`` for status checks, falls back to
#: ``sacct`` (which needs accounting we do not run) unless MinJobAge is at least 3 x its
#: ``slurm-init-seconds-before-status-checks``; and its poll interval grows to at most
#: 180 s, so a finished job must stay visible longer than that. 300 s (SLURM's default)
#: satisfies both for any init wait up to 100 s.
MIN_JOB_AGE = 300
#: Seconds between SIGTERM and SIGKILL when a job hits its time limit (default 30). Short,
#: so a timed-out job is gone quickly and the retry test stays short.
KILL_WAIT = 5


class ClusterError(RuntimeError):
    """The cluster could not be started or stopped; the message carries the log tails."""


def missing_programs() -> list[str]:
    """Return ``"program (package)"`` for each required program not on ``PATH``."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [
        f"{prog} ({pkg})"
        for prog, pkg in REQUIRED_PROGRAMS.items()
        if shutil.which(prog, path=path) is None
    ]


def unavailable_reason() -> str | None:
    """Why this machine cannot run the cluster, or ``None`` if it can."""
    missing = missing_programs()
    if missing:
        return (
            "SLURM/MUNGE programs missing: "
            + ", ".join(missing)
            + ". Run scripts/install-debian-packages.sh (as root) to install them."
        )
    if os.geteuid() != 0:
        return "the localhost SLURM cluster must be started as root (slurmd runs jobs as root)"
    return None


def _which(prog: str) -> str:
    """Absolute path of ``prog``; the daemons live in /usr/sbin, which a user PATH may lack."""
    found = shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise ClusterError(unavailable_reason() or f"{prog} not found")
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now (the kernel picks them).

    All sockets stay open until every port is picked, so the kernel cannot hand out the
    same port twice.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_resources() -> tuple[int, int]:
    """CPUs usable by this process and memory in MB to declare for the node.

    slurmd drains a node whose real memory is below the configured ``RealMemory``, so we
    declare a little less than ``MemTotal`` (kernel and daemons need some anyway).
    """
    cpus = len(os.sched_getaffinity(0))
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    mem_mb = max(256, int(mem_kb / 1024 * 0.95))
    return cpus, mem_mb


def _tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (no such file)"
    return f"--- {path} (last {lines} lines):\n" + "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> str:
    """The command line of a running process ('' if it is gone), NUL bytes as spaces."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 is the state; the command name in field 2 may contain spaces, hence rsplit.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_pids(workdir: Path) -> dict[str, int]:
    """The ``name pid`` lines of ``workdir/pids`` ({} if there is no such file)."""
    pids = {}
    try:
        lines = (workdir / "pids").read_text().splitlines()
    except OSError:
        return pids
    for line in lines:
        if line.strip():
            name, pid = line.split()
            pids[name] = int(pid)
    return pids


def _runs_ours(pid: int, name: str, workdir: Path) -> bool:
    """True if ``pid`` is alive and still the ``name`` daemon we started for ``workdir``.

    Every daemon we start has a path inside its work directory on its command line
    (config or key file), so a pid the kernel has since given to another program fails.
    """
    cmdline = _cmdline(pid)
    return _alive(pid) and name in cmdline and str(workdir) in cmdline


def _claim_system_conf(conf: Path) -> None:
    """Point /etc/slurm/slurm.conf at ``conf`` (why: see the module docstring).

    Refuses if that path holds a config we did not write, or one whose cluster still runs.
    A leftover link of ours (its cluster stopped or its directory deleted) is replaced.
    """
    if SYSTEM_CONF.is_symlink() or SYSTEM_CONF.exists():
        target = SYSTEM_CONF.resolve()
        if target.exists():
            first_line = target.read_text(errors="replace").partition("\n")[0]
            if not first_line.startswith(MARKER):
                raise ClusterError(
                    f"{SYSTEM_CONF} exists and was not written by tests/slurm_cluster.py; "
                    "refusing to replace a real SLURM configuration. Run the SLURM tests on "
                    "a machine without one (or move it away)."
                )
            other = target.parent
            if other != conf.parent and any(
                _runs_ours(pid, name, other) for name, pid in _read_pids(other).items()
            ):
                raise ClusterError(
                    f"another localhost SLURM cluster is running in {other}; stop it first: "
                    f"python tests/slurm_cluster.py stop {other}"
                )
        SYSTEM_CONF.unlink()
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(conf)


def _release_system_conf(conf: Path) -> None:
    """Remove /etc/slurm/slurm.conf if it is our link to ``conf`` (and nothing else)."""
    if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == conf:
        SYSTEM_CONF.unlink()


@dataclass
class Cluster:
    """A running localhost cluster. Create it with :func:`start`, end it with :meth:`stop`."""

    workdir: Path
    conf: Path
    munge_socket_dir: Path
    #: daemon name -> pid, in start order. Only these processes are ever signalled.
    pids: dict[str, int] = field(default_factory=dict)
    #: Popen objects when started by this Python process (lets us reap the children).
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------- using it
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which SLURM clients talk to this cluster.

        ``SLURM_CONF`` is all the clients need (``/usr/sbin`` is added to ``PATH`` for
        the daemons). Inside jobs the same config is found through the
        ``/etc/slurm/slurm.conf`` link instead, see the module docstring.
        """
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        return env

    def run(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster and return its stdout."""
        result = subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, timeout=30
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of every daemon log: the first thing to read when it breaks.

        munged logs to its captured stdout (``munged.out``). slurmctld/slurmd write their
        log files, and copy them to ``*.out``; the ``.out`` also holds what they printed
        before they could open the log file (a broken config, say), so it stands in when
        there is no log file.
        """
        paths = [self.workdir / "munged.out"]
        for daemon in ("slurmctld", "slurmd"):
            log = self.workdir / f"{daemon}.log"
            paths.append(log if log.exists() else self.workdir / f"{daemon}.out")
        return "\n".join(_tail(path, lines) for path in paths)

    def node_state(self) -> str:
        """The node's state as ``sinfo`` prints it ('idle', 'alloc', 'down*', ...)."""
        return self.run("sinfo", "-h", "-n", NODE_NAME, "-o", "%t", check=False).strip()

    # ----------------------------------------------------------------- stopping it
    def stop(self, timeout: float = 15.0) -> None:
        """Cancel the cluster's jobs, end the daemons we started, remove the socket dir.

        Each recorded pid is signalled only if it still runs the program we started with
        this work directory's config, so a pid the kernel recycled is left alone.
        """
        if self.pids.get("slurmctld") and _alive(self.pids["slurmctld"]):
            # Jobs run in slurmstepd processes that slurmd forked; we did not start them
            # and cannot signal them by pid, so ask SLURM to end them while it still can.
            try:
                job_ids = self.run("squeue", "-h", "-o", "%i", check=False).split()
                if job_ids:
                    self.run("scancel", *job_ids, check=False)
                    deadline = time.monotonic() + KILL_WAIT + 5
                    while time.monotonic() < deadline:
                        states = self.run("squeue", "-h", "-t", "R,CG", "-o", "%i", check=False)
                        if not states.strip():
                            break
                        time.sleep(0.5)
            except (ClusterError, subprocess.TimeoutExpired, OSError):
                pass  # best effort: stopping the daemons must still happen

        # Stop in reverse start order: slurmd, slurmctld, munged (the others need munged).
        for name, pid in reversed(list(self.pids.items())):
            self._stop_one(name, pid, timeout)
        self.pids.clear()
        _write_pids(self.workdir, self.pids)
        shutil.rmtree(self.munge_socket_dir, ignore_errors=True)
        _release_system_conf(self.conf)

    def _stop_one(self, name: str, pid: int, timeout: float) -> None:
        proc = self._procs.pop(name, None)
        if not _alive(pid):
            if proc is not None:
                proc.wait()
            return
        if not _runs_ours(pid, name, self.workdir):
            print(
                f"slurm_cluster: pid {pid} no longer runs our {name} "
                f"({_cmdline(pid)!r}); left alone",
                file=sys.stderr,
            )
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        if proc is not None:
            proc.wait()  # reap our child so it does not linger as a zombie


# --------------------------------------------------------------------------- starting
def _write_config(workdir: Path, socket_dir: Path) -> Path:
    """Write slurm.conf (and the MUNGE key) into ``workdir``; return the config's path."""
    cpus, mem_mb = _node_resources()
    ctld_port, slurmd_port = _free_ports(2)
    for sub in ("state", "spool"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)

    key = workdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)  # munged refuses a key that others can read

    conf = workdir / "slurm.conf"
    conf.write_text(
        f"""\
{MARKER}: a one-node test cluster on localhost.
ClusterName=localtest
SlurmctldHost={NODE_NAME}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root

# Authentication through our private munged, not the system one.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_dir / "munge.socket"}

StateSaveLocation={workdir / "state"}
SlurmdSpoolDir={workdir / "spool"}
SlurmctldPidFile={workdir / "slurmctld.pid"}
SlurmdPidFile={workdir / "slurmd.pid"}
SlurmctldLogFile={workdir / "slurmctld.log"}
SlurmdLogFile={workdir / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
# No mail from this test cluster (the default /bin/mail is not installed).
MailProg=/bin/true

# No systemd, cgroups or accounting database here: the simplest plugins.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# A plain-text record of every finished job (id, state, time limit), since there is no
# sacct without accounting: tests read it as evidence.
JobCompType=jobcomp/filetxt
JobCompLoc={workdir / "jobcomp.log"}
MpiDefault=none

# CPUs and memory are consumable, so several small jobs share the node like on a cluster.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# A job that names no memory gets this much per CPU, not the whole node.
DefMemPerCPU=1000

# Timeouts short enough for tests, long enough for a slow CI machine.
MinJobAge={MIN_JOB_AGE}
KillWait={KILL_WAIT}
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
ReturnToService=2

NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _spawn(cluster: Cluster, name: str, argv: list[str]) -> None:
    """Start one daemon in the foreground of its own session; record its pid.

    Foreground mode (``-F``/``-D``) means the pid we get is the daemon itself, not a
    parent that forks and exits. A new session keeps the daemon alive after the starting
    Python process exits (shell use) and away from the terminal's Ctrl-C.
    """
    log = open(cluster.workdir / f"{name}.out", "ab")  # the child keeps its own copy
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=cluster.env(),
    )
    log.close()
    cluster.pids[name] = proc.pid
    cluster._procs[name] = proc
    _write_pids(cluster.workdir, cluster.pids)


def _write_pids(workdir: Path, pids: dict[str, int]) -> None:
    """``DIR/pids``: one ``name pid`` line per daemon we started (read by ``stop DIR``)."""
    (workdir / "pids").write_text("".join(f"{name} {pid}\n" for name, pid in pids.items()))


def _wait_until(cluster: Cluster, what: str, ready, deadline: float) -> None:
    """Poll ``ready()`` until true; fail early if one of our daemons has died."""
    while True:
        for name, proc in cluster._procs.items():
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with status {proc.returncode} while waiting for {what}"
                )
        if ready():
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start(workdir: str | os.PathLike, timeout: float = 30.0) -> Cluster:
    """Start munged, slurmctld and slurmd for a fresh cluster in ``workdir``.

    Returns when the node is ``idle`` (ready for jobs). On failure everything already
    started is stopped again and :class:`ClusterError` is raised with the daemons' log
    tails. Typically up in 1-2 s.
    """
    reason = unavailable_reason()
    if reason:
        raise ClusterError(reason)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if any(_runs_ours(pid, name, workdir) for name, pid in _read_pids(workdir).items()):
        raise ClusterError(f"a cluster is already running in {workdir}; stop it first")
    # Short, world-searchable directory for the MUNGE socket (see module docstring).
    socket_dir = Path(tempfile.mkdtemp(prefix="munge-", dir="/tmp"))
    socket_dir.chmod(0o755)
    conf = _write_config(workdir, socket_dir)
    try:
        _claim_system_conf(conf)
    except (ClusterError, OSError):
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    cluster = Cluster(workdir=workdir, conf=conf, munge_socket_dir=socket_dir)
    (workdir / "cluster.json").write_text(
        json.dumps({"conf": str(conf), "munge_socket_dir": str(socket_dir)}, indent=2) + "\n"
    )

    deadline = time.monotonic() + timeout
    try:
        munge_socket = socket_dir / "munge.socket"
        _spawn(
            cluster,
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--socket={munge_socket}",
                f"--key-file={workdir / 'munge.key'}",
                f"--pid-file={workdir / 'munged.pid'}",
                f"--seed-file={workdir / 'munged.seed'}",
            ],
        )
        _wait_until(cluster, "the MUNGE socket", munge_socket.exists, deadline)
        # -c: start with no saved state; -D: foreground. slurmd -N: which node we are.
        _spawn(cluster, "slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(conf)])
        _spawn(cluster, "slurmd", [_which("slurmd"), "-D", "-f", str(conf), "-N", NODE_NAME])
        _wait_until(
            cluster, "the node to become idle", lambda: cluster.node_state() == "idle", deadline
        )
    except (ClusterError, OSError, subprocess.SubprocessError) as err:
        state = ""
        try:
            state = f"node state: {cluster.node_state()!r}\n"
        except Exception:  # diagnostics only: never mask the real error
            pass
        tails = cluster.log_tails()
        cluster.stop(timeout=5)
        raise ClusterError(
            f"localhost SLURM cluster in {workdir} did not come up: {err}\n{state}{tails}"
        ) from err
    return cluster


def attach(workdir: str | os.PathLike) -> Cluster:
    """The cluster a ``start DIR`` (possibly in another process) left in ``workdir``."""
    workdir = Path(workdir).resolve()
    info = json.loads((workdir / "cluster.json").read_text())
    return Cluster(
        workdir=workdir,
        conf=Path(info["conf"]),
        munge_socket_dir=Path(info["munge_socket_dir"]),
        pids=_read_pids(workdir),
    )


def main(argv: list[str] | None = None) -> int:
    """``start DIR`` / ``stop DIR`` from the shell; see the module docstring."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("start", "stop"):
        print("usage: python tests/slurm_cluster.py start|stop DIR", file=sys.stderr)
        return 2
    command, workdir = args
    try:
        if command == "start":
            cluster = start(workdir)
            print(f"slurm_cluster: up, pids {cluster.pids}", file=sys.stderr)
            # stdout is meant for `eval "$(...)"`: clients need only SLURM_CONF.
            print(f"export SLURM_CONF={shlex.quote(str(cluster.conf))}")
        else:
            attach(workdir).stop()
            print("slurm_cluster: stopped", file=sys.stderr)
    except (ClusterError, OSError) as err:
        print(f"slurm_cluster: {command} {workdir}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
