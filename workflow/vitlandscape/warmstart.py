"""Warm start for local runs: one server process imports torch, timm, matplotlib and the
library once; every job then runs in a process forked from it instead of a fresh Python.

A fresh job spends 3 to 4 s importing (torch 1.4 s, timm 1.9 s of which torchvision's import
of torch._dynamo is 1.3 s) before a tile that computes in 1 to 2 s; a forked one starts in
milliseconds. The job's command line is unchanged: `python -m vitlandscape STAGE ...` finds
the server's socket in VITLANDSCAPE_WARM_SOCKET and hands it its arguments, working folder,
environment and standard streams, then waits for the forked process and ends as it ended
(its exit status, or the same signal). Without a server, or when it cannot be reached, the
job runs in its own process as before: a server is an optimisation, never a requirement.

The server never runs a model, so it has started no OpenMP threads and touched no GPU:
both would break a forked child (see bench.isolated). It forks only from its one thread,
watches each client's socket (a client that dies, e.g. a cancelled job, takes its forked
job with it: SIGKILL) and its own parent (Snakemake; when that is gone, it stops).
"""
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import time

SOCKET_ENV = "VITLANDSCAPE_WARM_SOCKET"
# What jobs import; the server imports it once. Heavy third-party modules first.
PRELOAD = ("torch", "timm", "xarray", "zarr", "matplotlib", "vitlandscape.cli", "vitlandscape.train.stages",
           "vitlandscape.landscape.stages", "vitlandscape.landscape.tiles", "vitlandscape.metrics.stages",
           "vitlandscape.figures.stages", "vitlandscape.figures.reconstructions", "vitlandscape.metrics.tables", "vitlandscape.metrics.accuracy",
           "vitlandscape.data.prepare")
_HEADER = struct.Struct("!I")  # length of the JSON request that follows the file descriptors


# ---- client: the job's side ----

def run_via_server(argv: list[str]) -> None:
    """Run `python -m vitlandscape argv` in a process forked from the warm server and end this
    process as it ended. Returns (without running anything) when no server can be reached."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
    except OSError:  # no server (not started yet, or gone): run here
        conn.close()
        return
    reply = conn.makefile("rb").readline()  # b"" when the server closes without a reply
    if not reply:
        raise SystemExit(f"vitlandscape: the warm-start server at {path} ended before the job did")
    status = json.loads(reply)
    if "signal" in status:  # end as the job ended: killed by the same signal
        if status["signal"] not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to reset
            signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
    sys.exit(status["exit"])


# ---- server ----

def serve(path: str, parent: int) -> None:
    """Accept jobs on the Unix socket `path` until `parent` (Snakemake) is gone or SIGTERM."""
    import importlib
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # clients see the socket only once it accepts
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    jobs = _Jobs(listener)
    try:
        while not stopping and os.getppid() == parent:
            jobs.poll(timeout=1.0)
    finally:
        jobs.kill_all()
        listener.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))  # start() made it for this socket alone


class _Jobs:
    """The forked jobs, each watched through its client's socket and a pidfd."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, ("accept", None))
        self.running = {}  # pid -> (client socket, pidfd, stage, start time)

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            kind, pid = key.data
            if kind == "accept":
                self.start(*self.listener.accept())
            elif pid not in self.running:  # its other event in this round finished it
                continue
            elif kind == "client":  # EOF (or stray bytes): the client is gone, and so goes its job
                os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this job's
                self.selector.unregister(key.fileobj)
            else:
                self.finish(pid)

    def start(self, conn: socket.socket, _address) -> None:
        fds = []
        try:
            conn.settimeout(10)
            header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
            size = _HEADER.unpack(header)[0]
            body = conn.recv(size, socket.MSG_WAITALL)
            if len(body) != size:
                raise ValueError("the client closed the connection mid-request")
            request = json.loads(body)
            conn.settimeout(None)
            if len(fds) != 3:
                raise ValueError("a request carries the client's three standard streams")
        except (OSError, struct.error, ValueError):
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            self._child(conn, fds, request)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.running[pid] = (conn, pidfd, " ".join(request["argv"][:1]), time.perf_counter())
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))
        self.selector.register(pidfd, selectors.EVENT_READ, ("exited", pid))

    def finish(self, pid: int) -> None:
        conn, pidfd, stage, started = self.running.pop(pid)
        _, status = os.waitpid(pid, 0)
        reply = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
        print(f"job {pid} {stage}: {reply} after {time.perf_counter() - started:.1f} s", flush=True)
        self.selector.unregister(pidfd)
        if conn.fileno() in self.selector.get_map():  # not when its EOF was seen first
            self.selector.unregister(conn)
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the client is gone; its job is over anyway
        conn.close()
        os.close(pidfd)

    def kill_all(self) -> None:
        for pid in list(self.running):
            os.kill(pid, signal.SIGKILL)
            self.finish(pid)

    def _child(self, conn: socket.socket, fds: list[int], request: dict) -> None:
        """The forked job: the client's streams, folder and environment, then the stage. Never returns."""
        code = 1
        try:
            self.selector.close()
            self.listener.close()
            for other, pidfd, _, _ in self.running.values():
                other.close()
                os.close(pidfd)
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            code = _run_stage(request["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _run_stage(argv: list[str]) -> int:
    """`cli.main(argv)` with the exit status a fresh `python -m vitlandscape` would give."""
    import traceback

    from vitlandscape import cli
    sys.argv = ["vitlandscape", *argv]
    try:
        cli.main(argv)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


# ---- Snakemake's side: start and stop ----

def start(libdir, log_path, timeout: float = 60.0) -> tuple:
    """Start a server for this Snakemake process and wait (at most `timeout` s) until it accepts
    jobs: the first jobs would otherwise pay the imports themselves, beside the server's. Jobs
    find it through the environment they inherit. Returns (process, socket path) for `stop`."""
    import subprocess
    import tempfile
    folder = tempfile.mkdtemp(prefix="vitlandscape-warm-")  # mode 0700: only this user's jobs connect
    path = os.path.join(folder, "server.sock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(libdir), os.environ.get("PYTHONPATH")]))}
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "vitlandscape.warmstart", path, str(os.getpid())],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(path):
        os.environ[SOCKET_ENV] = path
    else:  # jobs start as fresh processes, as without a server
        print(f"vitlandscape: the warm-start server did not start (see {log_path}); jobs start cold")
    return process, path


def stop(server: tuple, timeout: float = 10.0) -> None:
    """Stop the server started by `start` (its running jobs are killed) and remove its folder."""
    process, path = server
    os.environ.pop(SOCKET_ENV, None)
    import subprocess
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if os.path.exists(os.path.dirname(path)):  # a server that never came up
        shutil.rmtree(os.path.dirname(path))


if __name__ == "__main__":
    started = time.perf_counter()
    print(f"warm-start server: socket {sys.argv[1]}, parent {sys.argv[2]}", flush=True)
    serve(sys.argv[1], int(sys.argv[2]))
    print(f"warm-start server: stopped after {time.perf_counter() - started:.0f} s", flush=True)
