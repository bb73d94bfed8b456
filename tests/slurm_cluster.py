"""A throw-away single-node SLURM cluster for the integration tests (root, no systemd).

Debian's slurm-wlm 22.05 + munge + slurmdbd + mariadb-server, every daemon started by hand
with its config, state, sockets, PID files and logs under one temporary directory, on free
ports, so it touches neither /etc/slurm nor another cluster on the machine. Client commands
(sbatch, sacct, ...) find it through SLURM_CONF in `cluster.env`. Every wait is bounded and
`stop()` ends each daemon by its own PID (SIGTERM, then SIGKILL after a bounded wait).
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
DAEMONS = ["munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sacctmgr"]
CLUSTER = "vitl"
ACCOUNT = "vitl"


def missing() -> list[str]:
    """The programs this cluster needs that are not installed (empty when it can run)."""
    return [p for p in DAEMONS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """`with SlurmCluster(tmp) as cluster: subprocess.run([...], env=cluster.env)`."""

    def __init__(self, root: Path, cpus: int = 2, memory_mb: int = 20000, gpus: int = 1):
        self.root = Path(root)
        self.cpus, self.memory_mb, self.gpus = cpus, memory_mb, gpus
        self.pids: dict[str, int] = {}  # daemon -> PID, in start order
        self.ports = {name: _free_port() for name in ("mysql", "dbd", "ctld", "slurmd")}
        self.conf = self.root / "etc" / "slurm.conf"
        # The plugin's job step drops every SLURM_* variable but the job's identity before its
        # nested `srun`, SLURM_CONF included; a real cluster has /etc/slurm/slurm.conf, this one
        # puts an `srun` first on PATH that names its private config.
        bin_dir = self.root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    # -- set-up -----------------------------------------------------------------------
    def _write_configs(self) -> None:
        r = self.root
        for folder in ("etc", "log", "run", "ctld", "slurmd", "mysql", "munge"):
            (r / folder).mkdir(parents=True, exist_ok=True)
        (r / "bin").mkdir(exist_ok=True)
        srun = r / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        auth = f"socket={r}/munge/munge.socket"
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost=localhost
SlurmctldPort={self.ports['ctld']}
SlurmdPort={self.ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo={auth}
CredType=cred/munge
StateSaveLocation={r}/ctld
SlurmdSpoolDir={r}/slurmd
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports['dbd']}
AccountingStoragePass={r}/munge/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=localhost CPUs={self.cpus} RealMemory={self.memory_mb}{gres} State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        # slurmd 22.05 drops a gpu GRES without File= ("Removing file-less GPU"), so the
        # advertised GPU is /dev/null: SLURM counts and schedules it, nothing computes on it.
        (r / "etc" / "gres.conf").write_text(
            f"NodeName=localhost Name=gpu Count={self.gpus} File=/dev/null\n" if self.gpus else "")
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo={auth}
DbdHost=localhost
DbdPort={self.ports['dbd']}
SlurmUser=root
PidFile={r}/run/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mysql']}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        self.pids[name] = proc.pid
        self._procs = getattr(self, "_procs", {})
        self._procs[name] = proc

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        """Poll `ready()` until true; bounded. A daemon that already died fails at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in getattr(self, "_procs", {}).items():
                if proc.poll() is not None and name != "munged":  # munged forks itself away
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                       + self.logs())
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}\n" + self.logs())

    def logs(self, tail: int = 15) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def start(self) -> "SlurmCluster":
        r = self.root
        self._write_configs()
        # munge: our own key and socket; it daemonises, so its PID comes from its pid file.
        subprocess.run([_which("munged"), "--force", f"--key-file={r}/munge/munge.key",
                        f"--socket={r}/munge/munge.socket", f"--pid-file={r}/munge/munged.pid",
                        f"--log-file={r}/log/munged.log", f"--seed-file={r}/munge/munged.seed"],
                       check=True, timeout=30, capture_output=True)
        self._wait("munged pid file", lambda: (r / "munge/munged.pid").exists(), 30)
        self.pids["munged"] = int((r / "munge/munged.pid").read_text())
        # MariaDB: a fresh data directory, TCP on a free port, a `slurm` user for slurmdbd.
        sock = r / "mysql" / "mysql.sock"
        self._run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={r}/mysql/data", "--user=root",
                   "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=120).check_returncode()
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={r}/mysql/data", "--user=root",
                                 f"--socket={sock}", f"--port={self.ports['mysql']}", "--bind-address=127.0.0.1",
                                 f"--pid-file={r}/run/mariadbd.pid", f"--log-error={r}/log/mariadbd.log",
                                 "--innodb-buffer-pool-size=64M", "--skip-log-bin"])
        self._wait("mariadbd socket", lambda: sock.exists(), 60)
        sql = ("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
               "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';")
        self._run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql]).check_returncode()
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: self._run(["sacctmgr", "-n", "show", "cluster"], 20).returncode == 0, 60)
        for args in (["add", "cluster", CLUSTER], ["add", "account", ACCOUNT, "Description=tests", "Organization=tests"],
                     ["add", "user", "root", f"Account={ACCOUNT}", f"DefaultAccount={ACCOUNT}"]):
            self._run(["sacctmgr", "-i", *args], 30)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
        self._wait("slurmctld", lambda: self._run(["scontrol", "ping"], 20).stdout.count("UP") > 0, 60)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost"])
        self._wait("node idle in sinfo", self._node_idle, 60)
        return self

    def _node_idle(self) -> bool:
        state = self._run(["sinfo", "-h", "-N", "-o", "%T|%E"], 20).stdout.strip()
        if state.startswith(("drain", "inval")):
            raise RuntimeError(f"node not usable: {state}\n" + self.logs())
        return state.startswith("idle")

    # -- tear-down --------------------------------------------------------------------
    def stop(self) -> None:
        """Stop each daemon by its PID, last started first; bounded waits, SIGKILL as the last word."""
        for name, pid in reversed(list(self.pids.items())):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(pid, getattr(self, "_procs", {}).get(name)):
                time.sleep(0.2)
            if _alive(pid, getattr(self, "_procs", {}).get(name)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pids.clear()
        # A job whose batch script was cancelled can leave children behind (a job group's
        # Snakemake, reparented to init); they carry this cluster's SLURM_CONF and a job id.
        for pid in self._job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _job_processes(self) -> list[int]:
        """PIDs of processes that run inside a job of this cluster."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                continue
            if mine in environ and any(v.startswith(b"SLURM_JOB_ID=") for v in environ):
                found.append(int(entry.name))
        return found

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries the tests use ----------------------------------------------------------
    def sacct(self, *fields: str, job_ids=None) -> list[dict]:
        """One dict per job allocation (-X) in the accounting database."""
        args = ["sacct", "-X", "-n", "-P", "-a", "-S", "2000-01-01", "-o", ",".join(fields)]
        if job_ids:
            args += ["-j", ",".join(map(str, job_ids))]
        out = self._run(args, 30)
        out.check_returncode()
        return [dict(zip(fields, line.split("|"))) for line in out.stdout.splitlines() if line]


def _alive(pid: int, proc=None) -> bool:
    if proc is not None:
        return proc.poll() is None  # reaps our own children, so a zombie does not count as alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def install_hint() -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
