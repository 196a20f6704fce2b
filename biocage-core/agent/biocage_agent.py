"""BioCage in-container agent (stdlib only, Python 3.8+).

Started by the host inside the sandbox container, in one of two roles:

  python3 -c SRC biocage-init GRACE
      PID 1 of the container: reaps orphaned processes, and exits (ending the
      container) once no supervisor has been alive for GRACE seconds, so that a
      host that vanished leaves nothing running behind.

  python3 -c SRC biocage-serve CONFIG_JSON
      The supervisor. Its stdin/stdout are the control channel to the host:
      one JSON object per line each way. It forks a worker interpreter that runs
      user code; the worker's fds 0/1/2 are /dev/null and two capture pipes, so
      nothing user code writes can reach the control channel. The supervisor
      enforces timeouts (SIGINT, then SIGKILL), notices a worker that died,
      reports why, and forks a fresh one.
"""

import base64
import errno
import json
import os
import select
import signal
import stat
import sys
import time

AGENT_VERSION = 1
SERVE_MARK = "biocage-serve"
READ_CHUNK = 65536
HIGH_FD = 200


def _set_dumpable(flag):
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, flag, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


# Per architecture: audit arch, then syscall numbers of unshare, clone, clone3, and of
# calls refused outright (keyctl, add_key, request_key, bpf, perf_event_open).
_SECCOMP_TABLE = {
    "x86_64": (0xC000003E, 272, 56, 435, (250, 248, 249, 321, 298)),
    "aarch64": (0xC00000B7, 97, 220, 435, (219, 217, 218, 280, 241)),
}


def _forbid_namespaces():
    """Installs a seccomp filter (inherited by all user code) that refuses new
    namespaces (unshare; clone with namespace flags; clone3 gets ENOSYS so that libc
    falls back to clone) and the kernel keyring, bpf and perf_event_open. Engines'
    own profiles differ here (rootless Podman allows unshare and keyctl); this holds
    on every one. Returns whether the filter is in place."""
    info = _SECCOMP_TABLE.get(os.uname().machine)
    if info is None:
        return False
    arch, nr_unshare, nr_clone, nr_clone3, denied = info
    namespaces = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    # Instructions with symbolic jump targets, resolved below.
    jge = 0x35
    # Another ABI (i386 via int 0x80, arm32) or x32 numbers would dodge the checks below:
    # refused outright.
    code = [(ld, None, None, 4), (jeq, 0, "eperm", arch), (ld, None, None, 0),
            (jge, "eperm", 0, 0x40000000)]
    for nr in (nr_unshare,) + tuple(denied):
        code.append((jeq, "eperm", 0, nr))
    code += [
        (jeq, "enosys", 0, nr_clone3),
        (jeq, 0, "allow", nr_clone),
        (ld, None, None, 16),  # clone flags: low 32 bits of the first argument
        (jset, "eperm", "allow", namespaces),
    ]
    labels = {"allow": 0x7FFF0000, "eperm": 0x00050000 | errno.EPERM, "enosys": 0x00050000 | errno.ENOSYS}
    at = {name: len(code) + k for k, name in enumerate(labels)}
    prog = []
    for pos, (op, jt, jf, k) in enumerate(code):
        rel = lambda t: 0 if t is None else (at[t] - pos - 1 if isinstance(t, str) else t)
        prog.append((op, rel(jt), rel(jf), k))
    prog += [(ret, 0, 0, value) for value in labels.values()]
    try:
        import ctypes

        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                        ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

        filters = (Filter * len(prog))(*[Filter(*f) for f in prog])
        fprog = Prog(len(prog), filters)
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
    except Exception:
        return False


def _harden_self():
    """Sets no_new_privs (inherited by every process user code starts, whatever the
    engine did) and makes this process non-dumpable, so same-uid code cannot ptrace
    it or read its memory."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except Exception:
        pass
    _set_dumpable(0)


# --------------------------------------------------------------------------- init


def run_init(grace):
    """PID 1: reap children; exit when no supervisor has lived for `grace` seconds."""
    _harden_self()
    # PID 1 ignores every signal it has no handler for, so sandbox code cannot stop
    # the container from inside. SIGCHLD is blocked and waited for, to reap at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    last_seen = last_check = time.monotonic()
    mark = ("\0" + SERVE_MARK + "\0").encode()
    while True:
        signal.sigtimedwait({signal.SIGCHLD}, 0.5)
        _reap_all()
        now = time.monotonic()
        if now - last_check < 0.5:
            continue
        last_check = now
        if _supervisor_alive(mark):
            last_seen = now
        elif now - last_seen > grace:
            sys.exit(0)


def _reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supervisor_alive(mark):
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                if mark not in f.read():
                    continue
            # Only the engine's exec has no parent in the container: sandbox code can copy
            # the mark into its own argv, not this.
            with open("/proc/%s/status" % name) as f:
                if any(line.split() == ["PPid:", "0"] for line in f):
                    return True
        except OSError:
            continue
    return False


# ------------------------------------------------------------------------- worker


def _move_fd(fd, target):
    """Duplicates fd to target (closing fd); keeps it across the fd clean-up."""
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)
    os.set_inheritable(target, False)
    return target


def _apply_rlimits(limits):
    import resource

    applied = {}
    for name, value in limits.items():
        res = getattr(resource, "RLIMIT_" + name.upper(), None)
        if res is None or value is None:
            continue
        try:
            _soft, hard = resource.getrlimit(res)
            if hard != resource.RLIM_INFINITY and value > hard:
                value = hard
            resource.setrlimit(res, (value, value))
            applied[name] = value
        except (ValueError, OSError) as exc:
            applied[name] = "failed: %s" % exc
    return applied


class Worker:
    """The interpreter that runs user code, in a forked child of the supervisor."""

    def __init__(self, cmd_fd, res_fd, out_fd, err_fd, config):
        self.cmd = os.fdopen(cmd_fd, "rb", buffering=0)
        self.null_fd = _move_fd(os.open(os.devnull, os.O_RDONLY), HIGH_FD + 4)
        self.res_fd = res_fd
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.config = config
        self.namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        self.cell = 0
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self.executing = False
        self.forked = False
        signal.signal(signal.SIGINT, self.on_sigint)
        os.register_at_fork(after_in_child=self.after_fork_in_child)

    def restore_stdio(self):
        """Puts fds 0-2 and sys.std* back, whatever the previous run did to them (with
        dup2 only: it needs no free descriptor, so it works after fd exhaustion)."""
        os.dup2(self.null_fd, 0)
        os.dup2(self.out_fd, 1)
        os.dup2(self.err_fd, 2)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        sys.stdin = sys.__stdin__

    def loop(self):
        buf = b""
        while True:
            chunk = self.cmd.read(READ_CHUNK)
            if not chunk:
                os._exit(0)
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.handle(json.loads(line))

    def on_sigint(self, signum, frame):
        """An interrupt is for user code only: one landing after the code ended (a late
        timeout) must not kill the interpreter and its state."""
        if self.executing:
            raise KeyboardInterrupt

    def after_fork_in_child(self):
        """A plain fork of the interpreter by user code is not the worker: it must not
        read commands or send results, nor keep the result pipe open."""
        self.forked = True
        for fd in (self.cmd.fileno(), self.res_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def handle(self, req):
        self.restore_stdio()
        self.cell += 1
        self.executing = True
        try:
            reply = self.execute(req["code"], req.get("filename") or "<cell-%d>" % self.cell)
        finally:
            self.executing = False
        if self.forked:
            # A child forked by the cell ran to its end without exiting: end it quietly.
            self._flush_all()
            os._exit(0)
        reply["id"] = req["id"]
        try:
            reply["culled"] = _cull_if_near_limit(self.config.get("pids_limit"))
            if self.config.get("capture_figures"):
                reply["images"] = _collect_figures()
        except Exception as exc:  # e.g. no descriptor left: the run's result still goes back
            reply["agent_note"] = "post-run work failed: %s" % exc
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        data = (json.dumps(reply) + "\n").encode()
        while data:
            data = data[os.write(self.res_fd, data):]

    def execute(self, code, filename):
        import linecache
        import textwrap
        import traceback

        if code[:1] in (" ", "\t") or code.startswith("\n "):
            # Code quoted inside an indented host-side string literal.
            code = textwrap.dedent(code)
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            value = self._exec(code, filename)
            return {"error": None, "value": value}
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            self._flush_all()
            # The interpreter is asked to end: obey, the supervisor reports it.
            os._exit(status & 0xFF)
        except BaseException as exc:  # noqa: B902 - user code may raise anything
            tb = exc.__traceback__
            # Drop the agent's own frames: the traceback starts at the user's code.
            while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-") \
                    and tb.tb_frame.f_code.co_filename != filename:
                tb = tb.tb_next
            # ...and ends there: the interrupt handler's own frame is not the user's.
            node = tb
            while node is not None and node.tb_next is not None:
                if node.tb_next.tb_frame.f_code is Worker.on_sigint.__code__:
                    node.tb_next = None
                    break
                node = node.tb_next
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            try:
                sys.stderr.write(text)
            except Exception:
                os.write(self.err_fd, text.encode("utf-8", "replace"))
            return {
                "error": {
                    "name": type(exc).__name__,
                    "message": str(exc),
                    "traceback": text,
                    "line": getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None,
                }
            }

    def _exec(self, code, filename):
        import ast

        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, filename, "exec"), self.namespace)
        if last is None:
            return None
        value = eval(compile(last, filename, "eval"), self.namespace)
        if value is None:
            return None
        try:
            text = repr(value)
        except Exception as exc:  # a broken __repr__ is the user's, not a failed run
            text = "<unrepresentable %s: %s>" % (type(value).__name__, exc)
        cap = int(self.config.get("value_cap", 65536))
        return text if len(text) <= cap else text[:cap] + "..."

    def _flush_all(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _cull_if_near_limit(limit):
    """Kills what a run left running once the sandbox nears its process limit (a fork
    bomb), so that the next run can start processes; the worker and its state stay.
    Runs in the worker, which reaps those that were its own children."""
    if not limit or os.getuid() == 0:
        return 0  # as root (never so in a sandbox) this would reach the whole machine
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if len(pids) < limit * 3 // 4:
        return 0
    keep = {1, os.getpid(), os.getppid()}
    me = os.getuid()
    killed = []
    for pid in pids:
        if pid in keep:
            continue
        try:
            if os.stat("/proc/%d" % pid).st_uid != me:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    for pid in killed:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # not ours: init reaps it
    return len(killed)


def _collect_figures():
    """PNGs of the matplotlib figures left open by the run; closes them."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    import io

    images = []
    try:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            images.append({"mime": "image/png", "data": base64.b64encode(buf.getvalue()).decode()})
        plt.close("all")
    except Exception as exc:
        images.append({"mime": "text/plain", "data": base64.b64encode(str(exc).encode()).decode()})
    return images


def _worker_main(fds, config):
    """Body of the forked worker process; never returns."""
    try:
        os.setsid()
        _set_dumpable(1)  # the supervisor is not; user code needs its own /proc/self
        cmd_r, res_w, out_w, err_w = fds
        cmd_r = _move_fd(cmd_r, HIGH_FD)
        res_w = _move_fd(res_w, HIGH_FD + 1)
        out_w = _move_fd(out_w, HIGH_FD + 2)
        err_w = _move_fd(err_w, HIGH_FD + 3)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(devnull)
        keep = {0, 1, 2, cmd_r, res_w, out_w, err_w}
        for fd in range(3, HIGH_FD + 4):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        # Let the out-of-memory killer pick the worker, never the supervisor.
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        _apply_rlimits(config.get("rlimits") or {})
        if config.get("umask") is not None:
            # Staged read-write exposures the host could not give to this user: what
            # the sandbox creates there must stay removable by the host user.
            os.umask(int(config["umask"]))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # until Worker installs its handler
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        for name in ("SIGCHLD", "SIGTERM"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        sys.stdin = open(0, "r", closefd=False)
        sys.__stdin__ = sys.stdin
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        workdir = config.get("workdir")
        if workdir:
            try:
                os.chdir(workdir)
            except OSError:
                pass
        sys.argv = [""]
        # Figures come back in the result: plt.show() on the headless backend is not an error.
        import warnings

        warnings.filterwarnings("ignore", message=".*non-interactive.*")
        Worker(cmd_r, res_w, out_w, err_w, config).loop()
    except BaseException:
        import traceback

        traceback.print_exc()
    os._exit(70)


# --------------------------------------------------------------------- supervisor


def _oom_kills():
    """The container's out-of-memory kill counter (cgroup v1 or v2), or None."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        return int(parts[1])
        except (OSError, ValueError):
            continue
    return None


class Capture:
    """One captured stream of the current run: bytes up to a cap, the rest counted."""

    def __init__(self, cap):
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk):
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    def text(self):
        return self.data.decode("utf-8", "replace")


class Supervisor:
    """Serves the host's requests on the control channel; owns the worker."""

    def __init__(self, config):
        self.config = config
        self.cap = int(config.get("output_cap", 1 << 20))
        self.grace = float(config.get("interrupt_grace", 2.0))
        # The control channel moves off fds 0/1, which then point at /dev/null.
        self.ctl_in = os.dup(0)
        self.ctl_out = os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        os.set_blocking(self.ctl_in, False)
        self.inbuf = b""
        self.worker = None
        self.run = None
        self.closing = False
        # Set when the worker died between runs: the next result says state was lost.
        self.lost_since_last_run = False

    # -- channel

    def send(self, msg):
        data = (json.dumps(msg) + "\n").encode()
        os.set_blocking(self.ctl_out, True)
        while data:
            data = data[os.write(self.ctl_out, data):]

    # -- worker lifecycle

    def start_worker(self):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = _fork_retrying()
        if pid == 0:
            for fd in (cmd_w, res_r, out_r, err_r, self.ctl_in, self.ctl_out):
                os.close(fd)
            _worker_main((cmd_r, res_w, out_w, err_w), self.config)
        for fd in (cmd_r, res_w, out_w, err_w):
            os.close(fd)
        for fd in (res_r, out_r, err_r):
            os.set_blocking(fd, False)
        self.worker = {"pid": pid, "cmd": cmd_w, "res": res_r, "out": out_r, "err": err_r, "resbuf": b""}

    def kill_everything(self):
        """Kills the worker and every process sandbox code left behind (not init, not us)."""
        try:
            if os.getuid() != 0:
                os.kill(-1, signal.SIGKILL)
            elif self.worker is not None:
                # As root (never so in a sandbox), kill(-1) would hit the whole machine.
                os.killpg(self.worker["pid"], signal.SIGKILL)
        except OSError:
            pass
        if self.worker is not None:
            try:
                os.waitpid(self.worker["pid"], 0)
            except ChildProcessError:
                pass
            for key in ("cmd", "res", "out", "err"):
                try:
                    os.close(self.worker[key])
                except OSError:
                    pass
            self.worker = None

    def replace_worker(self):
        self.kill_everything()
        self.start_worker()

    # -- requests

    def handle_request(self, req):
        op = req.get("op")
        rid = req.get("id")
        if op == "run":
            if self.run is not None:
                self.send({"id": rid, "op": "error", "message": "a run is already in progress"})
                return
            self.start_run(req)
        elif op == "interrupt":
            if self.run is not None and self.worker is not None:
                self.run["host_interrupt"] = True
                self.interrupt()
            self.send({"id": rid, "op": "ok"})
        elif op == "restart":
            if self.run is not None:
                self.finish_lost(kind="crashed", name="Restarted",
                                 message="the session was restarted during the run", code=137)
            self.replace_worker()
            self.lost_since_last_run = False  # asked for: the caller knows state is gone
            self.send({"id": rid, "op": "ok", "pid": self.worker["pid"]})
        elif op == "ping":
            self.send({"id": rid, "op": "ok", "busy": self.run is not None})
        elif op in ("write_file", "read_file", "list_dir"):
            self.send(file_op(op, req, self.config))
        elif op == "close":
            self.kill_everything()
            self.send({"id": rid, "op": "ok"})
            self.closing = True
        else:
            self.send({"id": rid, "op": "error", "message": "unknown op %r" % op})

    def start_run(self, req):
        if self.worker is None:
            self.start_worker()
        self.drain(discard=True)
        timeout = float(req.get("timeout") or self.config.get("timeout", 30))
        now = time.monotonic()
        self.run = {
            "id": req["id"],
            "start": now,
            "deadline": now + timeout,
            "timeout": timeout,
            "interrupted": False,
            "host_interrupt": False,
            "out": Capture(self.cap),
            "err": Capture(self.cap),
            "oom_before": _oom_kills(),
        }
        msg = json.dumps({"id": req["id"], "code": req["code"]}).encode() + b"\n"
        try:
            while msg:
                msg = msg[os.write(self.worker["cmd"], msg):]
        except OSError:
            pass  # the worker is gone; its death is noticed on its result pipe

    def interrupt(self):
        self.run["interrupted"] = True
        self.run["deadline"] = time.monotonic() + self.grace
        try:
            os.kill(self.worker["pid"], signal.SIGINT)
        except OSError:
            pass

    # -- output

    def drain(self, discard):
        """Reads whatever the capture pipes hold now, without blocking."""
        if self.worker is None:
            return
        for key in ("out", "err"):
            while True:
                try:
                    chunk = os.read(self.worker[key], READ_CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if not chunk:
                    break
                if not discard and self.run is not None:
                    self.run[key].add(chunk)

    def on_output(self, key):
        try:
            chunk = os.read(self.worker[key], READ_CHUNK)
        except (BlockingIOError, OSError):
            return
        if chunk and self.run is not None:
            self.run[key].add(chunk)

    def on_result(self):
        try:
            chunk = os.read(self.worker["res"], READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.on_worker_death()
            return
        self.worker["resbuf"] += chunk
        while b"\n" in self.worker["resbuf"]:
            line, self.worker["resbuf"] = self.worker["resbuf"].split(b"\n", 1)
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if self.run is not None and reply.get("id") == self.run["id"]:
                self.finish_ok(reply)

    # -- results

    def base_result(self):
        run = self.run
        self.drain(discard=False)
        return {
            "id": run["id"],
            "op": "result",
            "stdout": run["out"].text(),
            "stderr": run["err"].text(),
            "stdout_truncated": run["out"].truncated,
            "stderr_truncated": run["err"].truncated,
            "execution_time": round(time.monotonic() - run["start"], 6),
            "state_lost": self.lost_since_last_run,
        }

    def finish_ok(self, reply):
        res = self.base_result()
        self.lost_since_last_run = False
        culled = reply.get("culled")
        if culled:
            res["stderr"] += ("\n[biocage] the run left %d processes and the sandbox was at its "
                              "process limit; they were killed\n" % culled)
        err = reply.get("error")
        res["value"] = reply.get("value")
        res["images"] = reply.get("images") or []
        if err is None:
            res.update(success=True, exit_code=0, error=None)
        elif err["name"] == "KeyboardInterrupt" and self.run["interrupted"] and not self.run["host_interrupt"]:
            err.update(kind="timeout", message="execution exceeded the %.3g s timeout and was interrupted"
                       % self.run["timeout"])
            res.update(success=False, exit_code=124, error=err)
        elif err["name"] == "MemoryError":
            err["kind"] = "oom"
            res.update(success=False, exit_code=137, error=err)
        else:
            err["kind"] = "exception"
            res.update(success=False, exit_code=1, error=err)
        self.run = None
        self.send(res)

    def finish_lost(self, kind, name, message, code):
        res = self.base_result()
        self.lost_since_last_run = False
        res.update(success=False, exit_code=code, state_lost=True, value=None, images=[],
                   error={"kind": kind, "name": name, "message": message, "traceback": None})
        self.run = None
        self.send(res)

    def on_worker_death(self):
        """The worker's result pipe closed: it died. Report why, start a new one."""
        pid = self.worker["pid"]
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0
        run = self.run
        if run is not None:
            self.drain(discard=False)
            oom_after = _oom_kills()
            oom = run["oom_before"] is not None and oom_after is not None and oom_after > run["oom_before"]
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                if oom:
                    self.finish_lost("oom", "MemoryError",
                                     "the worker was killed by the out-of-memory killer "
                                     "(memory limit reached); earlier state is lost", 137)
                else:
                    self.finish_lost("crashed", signal.Signals(sig).name,
                                     "the worker was killed by signal %s; earlier state is lost"
                                     % signal.Signals(sig).name, 137)
            elif os.WEXITSTATUS(status) == 0:
                # sys.exit(0) / os._exit(0): the program ended normally; its state ends with it.
                res = self.base_result()
                self.lost_since_last_run = False
                res.update(success=True, exit_code=0, state_lost=True, value=None, images=[], error=None)
                self.run = None
                self.send(res)
            else:
                code = os.WEXITSTATUS(status)
                self.finish_lost("crashed", "SystemExit",
                                 "the worker exited with status %d; earlier state is lost" % code, 1)
        else:
            self.lost_since_last_run = True
        self.replace_worker()

    def on_deadline(self):
        run = self.run
        if not run["interrupted"]:
            self.interrupt()
            return
        # The interrupt was ignored for the whole grace period: kill and replace.
        if run["host_interrupt"]:
            kind, name, msg, code = "crashed", "Killed", "the run ignored an interrupt and was killed", 137
        else:
            kind, name, code = "timeout", "TimeoutError", 124
            msg = ("execution exceeded the %.3g s timeout, ignored the interrupt for %.3g s and was "
                   "killed; earlier state is lost" % (run["timeout"], self.grace))
        self.kill_worker_only()
        self.finish_lost(kind, name, msg, code)
        self.replace_worker()

    def kill_worker_only(self):
        try:
            os.kill(self.worker["pid"], signal.SIGKILL)
        except OSError:
            pass

    # -- main loop

    def serve(self):
        self.start_worker()
        self.send({"op": "hello", "agent_version": AGENT_VERSION, "python": sys.version.split()[0],
                   "pid": os.getpid(), "worker_pid": self.worker["pid"],
                   "rlimits": self.config.get("rlimits") or {}, "oom_counter": _oom_kills() is not None,
                   "seccomp": self.config.get("seccomp", False)})
        while not self.closing:
            fds = [self.ctl_in]
            if self.worker is not None:
                fds += [self.worker["res"], self.worker["out"], self.worker["err"]]
            timeout = None
            if self.run is not None:
                timeout = max(0.0, self.run["deadline"] - time.monotonic())
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            if self.worker is not None:
                for key in ("out", "err"):
                    if self.worker[key] in ready:
                        self.on_output(key)
                if self.worker["res"] in ready:
                    self.on_result()
            if self.ctl_in in ready:
                if not self.read_requests():
                    break
            if self.run is not None and time.monotonic() >= self.run["deadline"]:
                self.on_deadline()
        self.kill_everything()

    def read_requests(self):
        try:
            chunk = os.read(self.ctl_in, READ_CHUNK)
        except BlockingIOError:
            return True
        if not chunk:
            return False  # the host closed the channel
        self.inbuf += chunk
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.send({"id": None, "op": "error", "message": "malformed request: %s" % exc})
                continue
            self.handle_request(req)
        return True


def _fork_retrying():
    """fork(), retried for a while: right after a fork bomb is killed, the pids
    limit can still be reached until the init process has reaped the dead."""
    for _ in range(100):
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(0.02)
    return os.fork()


# --------------------------------------------------------------------- file ops


def _check_path(path, config):
    """Refuses paths outside the writable areas, relative paths and '..'."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "path must be absolute: %r" % (path,)
    parts = path.split("/")
    if ".." in parts or "\0" in path:
        return "path must not contain '..': %r" % (path,)
    roots = config.get("file_roots") or []
    norm = os.path.normpath(path)
    if not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots):
        return "path %r is outside the areas files may be transferred to or from (%s)" % (
            path, ", ".join(roots))
    return None


def _open_nofollow(path, flags, mode=0o644):
    """Opens path walking each component with O_NOFOLLOW, so no planted symlink is followed."""
    parts = [p for p in path.split("/") if p]
    dirfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                os.mkdir(part, 0o755, dir_fd=dirfd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = nxt
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dirfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode) and not flags & os.O_DIRECTORY:
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file (FIFOs, devices and sockets are refused)")
        os.set_blocking(fd, True)
        return fd
    finally:
        os.close(dirfd)


def _has_link(path):
    """True when a component of path is a symbolic link (for the error message only)."""
    parts = [p for p in path.split("/") if p]
    return any(os.path.islink("/" + "/".join(parts[: i + 1])) for i in range(len(parts)))


def file_op(op, req, config):
    rid = req.get("id")
    path = req.get("path")
    problem = _check_path(path, config)
    if problem:
        return {"id": rid, "op": "error", "message": problem}
    try:
        if op == "write_file":
            data = base64.b64decode(req.get("data", ""))
            fd = _open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, int(req.get("mode", 0o644)))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            return {"id": rid, "op": "ok", "size": len(data)}
        if op == "read_file":
            cap = int(req.get("max_bytes", 16 << 20))
            fd = _open_nofollow(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if size > cap:
                    return {"id": rid, "op": "error",
                            "message": "file %s is %d bytes, over the %d-byte cap" % (path, size, cap)}
                chunks, total = [], 0
                while True:
                    chunk = os.read(fd, READ_CHUNK)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > cap:
                        return {"id": rid, "op": "error",
                                "message": "file %s grew over the %d-byte cap" % (path, cap)}
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return {"id": rid, "op": "ok", "data": base64.b64encode(b"".join(chunks)).decode()}
        if op == "list_dir":
            fd = _open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = sorted(os.listdir(fd))
            finally:
                os.close(fd)
            return {"id": rid, "op": "ok", "names": names}
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _has_link(path):
            msg = "%s: refusing to follow a symbolic link" % path
        else:
            msg = "%s: %s" % (path, exc.strerror or os.strerror(exc.errno or 0))
        return {"id": rid, "op": "error", "message": msg}
    return {"id": rid, "op": "error", "message": "unknown op %r" % op}


# --------------------------------------------------------------------------- main


def main(argv):
    if len(argv) >= 2 and argv[1] == "biocage-init":
        run_init(float(argv[2]) if len(argv) > 2 else 10.0)
    elif len(argv) >= 2 and argv[1] == SERVE_MARK:
        config = json.loads(argv[2]) if len(argv) > 2 else {}
        _harden_self()
        config["seccomp"] = _forbid_namespaces()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        Supervisor(config).serve()
    else:
        sys.stderr.write("usage: biocage-init GRACE | %s CONFIG_JSON\n" % SERVE_MARK)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
