"""BioCage in-container agent (stdlib only, Python 3.8+).

Started by the host inside the sandbox container (whose PID 1 is biocage_init.py):

  python3 -I -c SRC biocage-serve CONFIG_JSON
      The supervisor. Its stdin/stdout are the control channel to the host:
      one JSON object per line each way. It forks a worker interpreter that runs
      user code; the worker's fds 0/1/2 are /dev/null and two capture pipes, so
      nothing user code writes can reach the control channel. The supervisor
      enforces timeouts (SIGINT, then SIGKILL), notices a worker that died,
      reports why, and forks a fresh one. Everything the worker reports is
      untrusted: user code runs in that process and can write to its pipes.

Agent processes run in isolated mode (-I): sys.path holds neither the working
directory nor the user site, and PYTHON* variables are ignored, so nothing sandbox
code writes is ever imported by them. The worker puts the user's places on its
sys.path; what the agent imports there later (asyncio, rlcompleter: each idle session
would pay for them up front) comes from the interpreter's own library only (see
_stdlib_import).
"""

import ast
import base64
import builtins
import codecs
import errno
import gc
import io
import json
import linecache
import os
import resource
import select
import signal
import stat
import sys
import textwrap
import time
import traceback
import types
import warnings

try:
    import ctypes
except ImportError:  # a Python without ctypes: the hello reports no filter
    ctypes = None

AGENT_VERSION = 2

# Exit codes and error kinds of results. The host's copy (ErrorKind and the EXIT_*
# constants in biocage-core/src/result.rs) is checked against this table by a test of
# biocage-core (protocol.rs): one "NAME = value" a line, nothing else between the marks.
# -- results table
EXIT_OK = 0
EXIT_EXCEPTION = 1
EXIT_TIMEOUT = 124
EXIT_KILLED = 137
KIND_EXCEPTION = "exception"
KIND_TIMEOUT = "timeout"
KIND_OOM = "oom"
KIND_CRASHED = "crashed"
KIND_EXIT = "exit"
# -- end of results table
SERVE_MARK = "biocage-serve"
READ_CHUNK = 65536
HIGH_FD = 200
# The worker's command pipe: the supervisor checks that the worker's main thread is
# blocked reading it before it believes a reported result.
CMD_FD = HIGH_FD
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(os.uname().machine)


def _json_escape_unencodable(err):
    """Lone surrogates (from surrogateescape'd bytes) cannot be UTF-8: sent as the
    visible text \\udcff, never as a JSON escape the host would reject."""
    return "".join("\\\\u%04x" % ord(c) for c in err.object[err.start:err.end]), err.end


codecs.register_error("biocage-json", _json_escape_unencodable)


def encode_message(msg):
    """One protocol line: JSON (UTF-8, "id" first so that an oversize line can still be
    attributed), valid whatever strings the message holds."""
    ordered = {"id": msg.get("id")}
    ordered.update(msg)
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "biocage-json") + b"\n"


def _set_dumpable(flag):
    try:
        ctypes.CDLL(None).prctl(4, flag, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


# Per architecture: audit arch, syscall numbers of unshare, clone and clone3, and of the
# calls that may be refused outright.
_SECCOMP_TABLE = {
    "x86_64": (0xC000003E, 272, 56, 435, {
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "memfd_create": 319,
        "inotify_init": 253, "inotify_init1": 294, "fanotify_init": 300, "shmget": 29,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    }),
    "aarch64": (0xC00000B7, 97, 220, 435, {
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "memfd_create": 279,
        "inotify_init1": 26, "fanotify_init": 262, "shmget": 194,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    }),
}
# io_uring is a second system call interface that no seccomp filter can look into
# (Docker's own profile refuses it since 25.0).
ALWAYS_DENIED = ("keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
                 "io_uring_setup", "io_uring_enter", "io_uring_register")


def _forbid_namespaces(extra_denied=()):
    """Installs a seccomp filter (inherited by all user code) that refuses new
    namespaces (unshare; clone with namespace flags; clone3 gets ENOSYS so that libc
    falls back to clone), the kernel keyring, bpf, perf_event_open, userfaultfd,
    io_uring, and
    whatever `extra_denied` names (calls whose resources an engine cannot bound per
    session). Engines' own profiles differ here (rootless Podman allows unshare and
    keyctl); this holds on every one. Returns whether the filter is in place."""
    info = _SECCOMP_TABLE.get(os.uname().machine)
    if info is None or ctypes is None:
        return False
    arch, nr_unshare, nr_clone, nr_clone3, numbers = info
    denied = [numbers[n] for n in tuple(ALWAYS_DENIED) + tuple(extra_denied) if n in numbers]
    namespaces = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    jge = 0x35
    # Another ABI (i386 via int 0x80, arm32) or x32 numbers would dodge the checks below:
    # refused outright.
    code = [(ld, None, None, 4), (jeq, 0, "eperm", arch), (ld, None, None, 0),
            (jge, "eperm", 0, 0x40000000)]
    for nr in [nr_unshare] + denied:
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
    def rel(target, pos):
        if target is None:
            return 0
        return at[target] - pos - 1 if isinstance(target, str) else target

    for pos, (op, jt, jf, k) in enumerate(code):
        prog.append((op, rel(jt, pos), rel(jf, pos), k))
    prog += [(ret, 0, 0, value) for value in labels.values()]
    try:
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


# ------------------------------------------------------------- privilege separation
#
# The container starts as root holding only the capabilities below. The supervisor
# drops to a uid of its own (agent_uid) and keeps just those; the worker, before any
# user code, drops to the sandbox uid with no capability at all, not even in its
# bounding set. Sandbox code then shares no uid with the supervisor: it can neither
# signal, trace nor read it, nor take over a process the supervisor starts.

# What the supervisor keeps, and why: SETUID/SETGID/SETPCAP to start the worker as the
# sandbox user; KILL to interrupt and end its processes; SYS_PTRACE to see whether the
# worker's main thread is back in its loop (under gVisor, by ptrace). Its files are the
# sandbox user's: its filesystem uid is that user's (setfsuid), so file transfers and
# read-write exposures see and make exactly what user code would, while the uids that
# signals, tracing and /proc are checked against stay its own.
AGENT_CAPS = {"KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "SYS_PTRACE": 19}
# Only where the kernel has no setfsuid (gVisor): to reach the sandbox user's files
# from the agent's own uid, and to give it what the supervisor makes.
FILE_CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3}
# [uid, gid] that files the supervisor makes are given to, when its filesystem ids are
# not the sandbox user's already.
FILE_OWNER = []


def _capset(caps):
    """Sets the effective and permitted capabilities to `caps` (bit numbers), none
    inheritable. Returns whether the kernel took it."""
    if ctypes is None:
        return False

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    mask = 0
    for bit in caps:
        mask |= 1 << bit
    data = (Data * 2)(Data(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                      Data(mask >> 32, mask >> 32, 0))
    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(126 if os.uname().machine == "x86_64" else 91,  # capset
                        ctypes.byref(header), data) == 0


def _become(uid, gid, caps):
    """Drops this process to `uid`:`gid` (no supplementary groups) keeping only `caps`
    (bit numbers). Raises OSError when the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(8, 1 if caps else 0, 0, 0, 0) != 0:  # PR_SET_KEEPCAPS
        raise OSError(ctypes.get_errno(), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc.prctl(8, 0, 0, 0, 0)
    if not _capset(caps):
        raise OSError(ctypes.get_errno(), "capset")
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL


def _drop_bounding_set():
    """Empties the bounding set: nothing this process or its children run can ever
    gain a capability (needs CAP_SETPCAP, which the supervisor hands down)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for bit in range(64):
        if libc.prctl(24, bit, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


def _separate_supervisor(config):
    """As root at start (the container's user), drops the supervisor to its own uid
    with AGENT_CAPS. Returns whether the sandbox user and the supervisor are apart."""
    agent_uid = config.get("agent_uid")
    if agent_uid is None or os.getuid() != 0 or ctypes is None:
        return False
    try:
        uid, gid = int(config["sandbox_uid"]), int(config["sandbox_gid"])
        for path in config.get("own_paths") or ():
            # Mounts the engine made root's (Podman chowns only to the container's user).
            try:
                os.chown(path, uid, gid, follow_symlinks=False)
            except FileNotFoundError:
                pass
        _become(int(agent_uid), int(agent_uid), list(AGENT_CAPS.values()) + list(FILE_CAPS.values()))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setfsgid(gid)
        libc.setfsuid(uid)
        if libc.setfsuid(-1) == uid:  # -1 changes nothing and tells the current one
            # Files as the sandbox user (its filesystem ids): the file capabilities go.
            _capset(AGENT_CAPS.values())
        else:
            # No setfsuid (gVisor): files through the file capabilities, and what the
            # supervisor makes is given to the sandbox user.
            FILE_OWNER[:] = [uid, gid]
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write("biocage agent: privilege separation failed: %s\n" % e)
        return False
    return True


def _separate_worker(config):
    """In the worker, before anything of the user's: the sandbox uid, no capability."""
    if config.get("agent_uid") is None or ctypes is None:
        return
    _drop_bounding_set()
    _become(int(config["sandbox_uid"]), int(config["sandbox_gid"]), ())


def _harden_self():
    """Sets no_new_privs (inherited by every process user code starts, whatever the
    engine did) and makes this process non-dumpable, so same-uid code cannot ptrace
    it or read its memory. Returns whether no_new_privs is set."""
    ok = False
    try:
        ok = ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    except Exception:
        pass
    _set_dumpable(0)
    return ok


# ------------------------------------------------------------------------- worker


def _move_fd(fd, target):
    """Duplicates fd to target (closing fd); keeps it across the fd clean-up."""
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)
    os.set_inheritable(target, False)
    return target


def _apply_rlimits(limits):
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


def _stdlib_import(name):
    """Imports `name` in the worker from the interpreter's own paths, leaving out the
    places user code can write (the working directory, '' on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    saved = sys.path[:]
    cwd = os.getcwd()
    sys.path[:] = [p for p in saved if p and p not in (".", cwd) and not p.startswith(cwd + "/")]
    try:
        __import__(name)
        return sys.modules[name]
    finally:
        sys.path[:] = saved


def _cap(text, limit):
    """(text cut to `limit` characters, whether it was cut)."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def _safe_str(obj, what="str"):
    """str() or repr() of user objects, which may raise anything."""
    try:
        return str(obj) if what == "str" else repr(obj)
    except BaseException:  # noqa: B902 - user code may raise anything
        return "<exception %s() failed>" % what


class Caps:
    """The caps on what one result may carry (set by the host; defaults for tests)."""

    def __init__(self, config):
        self.output = int(config.get("output_cap", 1 << 20))
        self.value = int(config.get("value_cap", 65536))
        self.message = int(config.get("message_cap", 65536))
        self.traceback = int(config.get("traceback_cap", 262144))
        self.name = 256
        self.note = 4096
        self.images = int(config.get("max_images", 16))
        self.image_bytes = int(config.get("max_image_bytes", 8 << 20))
        self.pixels = int(config.get("max_image_pixels", 16_000_000))
        self.code = int(config.get("max_code_bytes", 16 << 20))
        self.displays = int(config.get("max_displays", 32))
        self.display_bytes = int(config.get("max_display_bytes", 16 << 20))
        # Per MIME type: most characters of one form (image/png: its base64).
        self.mime = {"text/plain": self.value, "text/html": 1 << 20, "text/markdown": 1 << 20,
                     "application/json": 1 << 20, "image/svg+xml": 1 << 20, "image/png": 8 << 20}


class Worker:
    """The interpreter that runs user code, in a forked child of the supervisor."""

    def __init__(self, res_fd, out_fd, err_fd, config):
        self.null_fd = _move_fd(os.open(os.devnull, os.O_RDONLY), HIGH_FD + 4)
        self.res_fd = res_fd
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.config = config
        self.caps = Caps(config)
        # The user's namespace is a real, registered __main__ module, as in `python -i`:
        # pickle, multiprocessing and typing find what runs define there.
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        self.namespace = main.__dict__
        self.displays = []
        self.streaming = False
        self.current_id = None
        self.async_loop = None
        builtins.display = self.display  # IPython's name for showing rich output
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
        buf = bytearray()
        scanned = 0
        while True:
            # The supervisor checks that the main thread sits in exactly this read
            # (fd CMD_FD) before it believes a result.
            chunk = os.read(CMD_FD, READ_CHUNK)
            if not chunk:
                os._exit(0)
            buf += chunk
            while True:
                nl = buf.find(b"\n", scanned)
                if nl < 0:
                    scanned = len(buf)
                    break
                # A "go on" byte meant for a display() that was not waiting (user code
                # can forge display events) is skipped.
                line = bytes(buf[:nl]).lstrip(b"\x06")
                del buf[:nl + 1]
                scanned = 0
                try:
                    req = json.loads(line)
                except ValueError:
                    continue  # a line user code read part of (it can read this pipe)
                if isinstance(req, dict):
                    self.handle(req)

    def on_sigint(self, signum, frame):
        """An interrupt is for user code only: one landing after the code ended (a late
        timeout) must not kill the interpreter and its state."""
        if self.executing:
            raise KeyboardInterrupt

    def after_fork_in_child(self):
        """A plain fork of the interpreter by user code is not the worker: it must not
        read commands or send results, nor keep the result pipe open."""
        self.forked = True
        for fd in (CMD_FD, self.res_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def display(self, *objs, **_kwargs):
        """Shows each object in the result's `displays` (as IPython's display() does);
        during a streamed run, each goes to the host at once too."""
        for obj in objs:
            bundle = mimebundle(obj, self.caps)
            self.displays.append(bundle)
            if self.streaming:
                # In order with the output: what was printed before it is in the pipes;
                # the supervisor sends that first, then the display, then lets us go on.
                self._flush_all()
                self.answer({"id": self.current_id, "event": "display", "bundle": bundle})
                os.read(CMD_FD, 1)

    def event_loop(self):
        """The session's own event loop: top-level await runs on it, and it persists. It
        is the loop asyncio.get_event_loop() gave user code, if it asked first."""
        if self.async_loop is None or self.async_loop.is_closed():
            asyncio = _stdlib_import("asyncio")
            policy = asyncio.get_event_loop_policy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    loop = policy.get_event_loop()
                except RuntimeError:
                    loop = None
            if loop is None or loop.is_closed():
                loop = policy.new_event_loop()
                policy.set_event_loop(loop)
            self.async_loop = loop
        return self.async_loop

    def handle(self, req):
        if req.get("op") == "barrier":
            # Back in the loop (see Supervisor.check_done): echo the supervisor's nonce.
            self.answer({"barrier": req.get("nonce")})
            return
        if req.get("op") == "complete":
            self.answer({"id": req["id"], "matches": self.completions(req.get("text", ""))})
            return
        for pid in req.get("reap") or ():
            # Processes the supervisor culled (SIGKILL) after the last run: those that were
            # children of this one are reaped before the run starts.
            try:
                os.waitpid(pid, 0)
            except (OSError, TypeError, OverflowError):
                pass
        self.restore_stdio()
        self.cell += 1
        self.displays = []
        self.current_id = req["id"]
        self.streaming = bool(req.get("stream"))
        script = req.get("script")
        if isinstance(script, dict):
            # Run as `python PATH ARGS...` runs it.
            path = str(script.get("path"))
            sys.argv = [os.path.basename(path)] + [str(a) for a in script.get("argv") or []]
            self.namespace["__file__"] = path
            folder = os.path.dirname(path) or "."
            sys.path[0] = folder
        self.executing = True
        try:
            reply = self.execute(req["code"], req.get("filename") or "<cell-%d>" % self.cell)
        finally:
            self.executing = False
        if self.forked:
            # A child forked by the cell ran to its end without exiting: end it quietly.
            self._flush_all()
            os._exit(0)
        out = {"id": req["id"]}
        out.update(reply)
        try:
            if self.config.get("capture_figures"):
                out["images"], out["images_truncated"] = _collect_figures(self.caps)
        except BaseException as exc:  # noqa: B902 - e.g. no descriptor left: the result still goes back
            out["agent_note"] = "post-run work failed: %s" % _safe_str(exc)
        out["displays"] = self.displays
        self.displays = []
        self._flush_all()
        for stream in (self.stdout, self.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        # User code may have made this process non-dumpable: the supervisor's look at where
        # this thread is (/proc/PID/syscall, ptrace) needs it dumpable.
        _set_dumpable(1)
        self.answer(out)

    def answer(self, out):
        # ensure_ascii: whatever strings user code made (lone surrogates too) stay valid.
        data = (json.dumps(out) + "\n").encode()
        while data:
            data = data[os.write(self.res_fd, data):]

    def completions(self, text):
        """Names in the live namespace that complete `text` (for the REPL's tab key)."""
        matches = []
        if not isinstance(text, str) or len(text) > 1024:
            return matches
        completer = _stdlib_import("rlcompleter").Completer(self.namespace)
        self.executing = True  # attribute lookups run user code: a deadline may interrupt
        try:
            for i in range(200):
                m = completer.complete(text, i)
                if m is None:
                    break
                matches.append(m)
        except BaseException:  # noqa: B902 - user code in __getattr__ may raise anything
            pass
        finally:
            self.executing = False
        return matches

    def execute(self, code, filename):
        if code[:1] in (" ", "\t") or code.startswith("\n "):
            # Code quoted inside an indented host-side string literal.
            code = textwrap.dedent(code)
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            value = self._exec(code, filename)
        except SystemExit as exc:
            status = self._exit_status(exc)
            if self.forked:
                # A child forked by the cell (e.g. a process pool's worker) ends here.
                self._flush_all()
                os._exit(status & 0xFF)
            # As in a notebook, sys.exit() ends the run, not the session.
            return {"error": None, "value": None, "exit_status": status}
        except BaseException as exc:  # noqa: B902 - user code may raise anything
            return self._describe(exc, filename)
        if value is None:
            return {"error": None, "value": None}
        self.namespace["_"] = value
        self.displays.append(mimebundle(value, self.caps))
        text, cut = _cap(_safe_str(value, "repr"), self.caps.value)
        return {"error": None, "value": text, "value_truncated": cut}

    def _exit_status(self, exc):
        """The status `python` would exit with for this SystemExit; a message that is not
        a number goes to stderr, as Python prints it."""
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int) and not isinstance(code, bool):
            return code & 0xFF
        try:
            sys.stderr.write(_safe_str(code) + "\n")
        except BaseException:  # noqa: B902
            pass
        return 1

    def _describe(self, exc, filename):
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
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:  # noqa: B902 - a hostile exception can break formatting
            text = "%s: <traceback formatting failed>\n" % type(exc).__name__
        text, tb_cut = _cap(text, self.caps.traceback)
        try:
            # As much as the capture keeps, and one more character so that it says "cut".
            sys.stderr.write(text[: self.caps.output + 1])
        except BaseException:  # noqa: B902
            os.write(self.err_fd, text[: self.caps.output + 1].encode("utf-8", "backslashreplace"))
        message, msg_cut = _cap(_message(exc), self.caps.message)
        syntax = isinstance(exc, SyntaxError)
        line = getattr(exc, "lineno", None) if syntax else None
        offset = getattr(exc, "offset", None) if syntax else None
        return {
            "error": {
                "name": _cap(_safe_str(type(exc).__name__), self.caps.name)[0],
                "message": message,
                "traceback": text,
                "line": line if isinstance(line, int) else None,
                "offset": offset if isinstance(offset, int) else None,
                "truncated": msg_cut or tb_cut,
            }
        }

    def _exec(self, code, filename):
        """Runs the code; returns the value of a last expression (None otherwise). Top-level
        await runs on the session's own event loop, as in a notebook."""
        tree = compile(code, filename, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        self._eval(compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))
        if last is None:
            return None
        return self._eval(compile(last, filename, "eval", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT))

    def _eval(self, code):
        if code.co_flags & CO_COROUTINE:
            return self.event_loop().run_until_complete(eval(code, self.namespace))
        return eval(code, self.namespace)

    def _flush_all(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: B902
                pass


# Code compiled with top-level await that awaits is a coroutine (inspect.CO_COROUTINE).
CO_COROUTINE = 0x0080


def _message(exc):
    """The text Python prints after "Name: " (notes added with add_note included)."""
    if isinstance(exc, SyntaxError):
        return _safe_str(exc.msg) if exc.msg is not None else ""
    text = _safe_str(exc)
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        text += "".join("\n" + _safe_str(n) for n in notes)
    return text


def mimebundle(obj, caps):
    """The rich forms of an object, as IPython's formatter finds them: text/plain always,
    others from `_repr_*_` methods (and matplotlib figures as PNG), each within its cap."""
    bundle = {"text/plain": _cap(_safe_str(obj, "repr"), caps.value)[0]}
    methods = (("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
               ("image/svg+xml", "_repr_svg_"), ("application/json", "_repr_json_"),
               ("image/png", "_repr_png_"))
    for mime, name in methods:
        try:
            method = getattr(obj, name, None)
            data = method() if callable(method) else None
        except BaseException:  # noqa: B902 - a broken formatter is skipped, as in IPython
            continue
        if isinstance(data, tuple):
            data = data[0]
        if data is None:
            continue
        if mime == "application/json":
            try:
                data = json.dumps(data)
            except (TypeError, ValueError):
                continue
        elif mime == "image/png":
            if not isinstance(data, bytes):
                continue
            data = base64.b64encode(data).decode()
        if isinstance(data, str) and len(data) <= caps.mime[mime]:
            bundle[mime] = data
    if "image/png" not in bundle and type(obj).__name__ == "Figure" and hasattr(obj, "savefig"):
        try:
            buf = io.BytesIO()
            obj.savefig(buf, format="png")
            data = base64.b64encode(buf.getvalue()).decode()
            if len(data) <= caps.mime["image/png"]:
                bundle["image/png"] = data
        except BaseException:  # noqa: B902
            pass
    return bundle


def _collect_figures(caps):
    """PNGs of the matplotlib figures left open by the run, within the count, byte and
    pixel caps; closes them all. Returns (images, whether some were left out)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return [], False
    images, cut, total, pixels = [], False, 0, 0
    try:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            width, height = fig.get_size_inches() * fig.dpi
            px = int(width) * int(height)
            if len(images) >= caps.images or pixels + px > caps.pixels:
                cut = True
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            data = buf.getvalue()
            if total + len(data) > caps.image_bytes:
                cut = True
                continue
            pixels += px
            total += len(data)
            images.append({"mime": "image/png", "data": base64.b64encode(data).decode()})
    finally:
        plt.close("all")
    return images, cut


def _worker_main(fds, config):
    """Body of the forked worker process; never returns."""
    try:
        os.setsid()
        _set_dumpable(1)  # the supervisor is not; user code needs its own /proc/self
        cmd_r, res_w, out_w, err_w = fds
        _move_fd(cmd_r, CMD_FD)
        res_w = _move_fd(res_w, HIGH_FD + 1)
        out_w = _move_fd(out_w, HIGH_FD + 2)
        err_w = _move_fd(err_w, HIGH_FD + 3)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(devnull)
        keep = {0, 1, 2, CMD_FD, res_w, out_w, err_w}
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
        _separate_worker(config)
        _set_dumpable(1)  # a change of uid cleared it
        _apply_rlimits(config.get("rlimits") or {})
        if config.get("umask") is not None:
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
        warnings.filterwarnings("ignore", message=".*non-interactive.*")
        worker = Worker(res_w, out_w, err_w, config)
        # Only now, with the limits in force and the agent's modules loaded, does this
        # interpreter look in the working directory, as `python -i` does (the user site
        # stays off: its .pth files would run outside any run's time limit).
        sys.path.insert(0, "")
        worker.loop()
    except BaseException:  # noqa: B902
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


def _blocked_reading(pid):
    """Whether the worker's main thread is blocked in read() on its command pipe, i.e.
    back in its loop: True, False, or None when the kernel does not say."""
    try:
        with open("/proc/%d/syscall" % pid, "rb") as f:
            parts = f.read().split()
    except OSError:
        return None
    if _READ_SYSCALL is None:
        return None
    try:
        return int(parts[0]) == _READ_SYSCALL and int(parts[1], 16) == CMD_FD
    except (IndexError, ValueError):
        return False  # "running"


# ptrace requests and the x86_64 register slots they read (struct user_regs_struct).
_PTRACE_GETREGS, _PTRACE_DETACH, _PTRACE_SEIZE, _PTRACE_INTERRUPT = 12, 17, 0x4206, 0x4207
_WALL = 0x40000000
_REG_RAX, _REG_RDI, _REG_ORIG_RAX, _REG_COUNT = 10, 14, 15, 27
_ERESTARTSYS = 512


_PTRACE_LIBC = []


def _ptrace_libc():
    """libc with ptrace typed for the calls below, made once (asked on every look)."""
    if not _PTRACE_LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.restype = ctypes.c_long
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        _PTRACE_LIBC.append(libc)
    return _PTRACE_LIBC[0]


def _ptrace_blocked_reading(pid, asked=False, wait=0.05):
    """Where /proc/PID/syscall is missing (gVisor): the same question asked with ptrace.
    The worker's main thread is stopped for a moment (PTRACE_SEIZE, PTRACE_INTERRUPT),
    its registers say which system call it was blocked in, and it goes on (an
    interrupted read restarts by itself). Nothing in the worker's process can answer in
    its place, as it could to a question sent down a pipe. A thread in a wait that no
    stop interrupts (a vfork's) stops only later: the stop is waited for `wait` seconds
    at most, and with `asked` a later call takes it up instead of asking again.

    Returns (idle, status, asked): idle is True, False, or None where ptrace cannot say
    (not x86_64); status is the worker's wait status when it turned out to have ended
    (it is then reaped), else None; asked is whether a stop is still to come."""
    if ctypes is None or os.uname().machine != "x86_64" or _READ_SYSCALL is None:
        return None, None, False
    libc = _ptrace_libc()
    if not asked:
        if libc.ptrace(_PTRACE_SEIZE, pid, None, None) != 0:
            return False, None, False  # another tracer (user code's own) or gone
        if libc.ptrace(_PTRACE_INTERRUPT, pid, None, None) != 0:
            return False, None, True  # the stop may still come: taken up next time
    deadline = time.monotonic() + wait
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG | _WALL)
        except ChildProcessError:
            return False, None, False
        if got:
            break
        if time.monotonic() >= deadline:
            return False, None, True
        time.sleep(0.0001)
    if not os.WIFSTOPPED(status):
        return False, status, False
    signum, idle = 0, False
    if status >> 16 == 0:
        signum = os.WSTOPSIG(status)  # a signal on its way in: handed back on detach
    else:
        regs = (ctypes.c_ulonglong * _REG_COUNT)()
        if libc.ptrace(_PTRACE_GETREGS, pid, None, ctypes.byref(regs)) == 0:
            # Stopped while blocked in read(CMD_FD): the call restarts (-ERESTARTSYS).
            idle = (regs[_REG_ORIG_RAX] == _READ_SYSCALL and regs[_REG_RDI] == CMD_FD
                    and ctypes.c_longlong(regs[_REG_RAX]).value == -_ERESTARTSYS)
    libc.ptrace(_PTRACE_DETACH, pid, None, ctypes.c_void_p(signum))
    return idle, None, False


def _reap_worker(pid):
    """The wait status of the worker, whose result pipe closed. It is dying, or user code
    closed the pipe (or exec'd) and it lives on: given a second to end by itself, then
    killed. Never blocks on a worker that lives on, nor takes a stop for an end."""
    deadline = time.monotonic() + 1.0
    killed = False
    while True:
        try:
            got, status = os.waitpid(pid, 0 if killed else os.WNOHANG)
        except ChildProcessError:
            return 0
        if got and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return status
        if not killed and time.monotonic() >= deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            killed = True
        elif not killed:
            time.sleep(0.001)


def _cull_if_near_limit(limit, keep, uid):
    """Kills what a run left running once the sandbox nears its process limit (a fork
    bomb), so that the next run can start processes; the worker and its state stay.
    `uid` is the sandbox user's. Returns the pids killed (the worker reaps those that
    were its children)."""
    if not limit or os.getuid() == 0:
        return []  # as root (never so in a sandbox) this would reach the whole machine
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if len(pids) < limit * 3 // 4:
        return []
    me = uid
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
    return killed


class Capture:
    """One captured stream of the current run: bytes up to a cap, the rest counted."""

    def __init__(self, cap):
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk):
        """Keeps what fits under the cap; returns the part kept."""
        room = self.cap - len(self.data)
        kept = chunk[:room] if room > 0 else b""
        self.data += kept
        if len(chunk) > room:
            self.truncated = True
        return kept

    def text(self):
        return self.data.decode("utf-8", "replace")


class LineReader:
    """Lines from a non-blocking fd, in linear time, none longer than `limit`: a longer
    one is dropped (reported as None) up to its end."""

    def __init__(self, limit):
        self.limit = limit
        self.buf = bytearray()
        self.scanned = 0
        self.skipping = False

    def feed(self, chunk):
        """Adds a chunk; returns the complete lines in it (None for a dropped one)."""
        self.buf += chunk
        lines = []
        while True:
            nl = self.buf.find(b"\n", self.scanned)
            if nl < 0:
                self.scanned = len(self.buf)
                if self.scanned > self.limit:
                    del self.buf[:]
                    self.scanned = 0
                    if not self.skipping:
                        self.skipping = True
                        lines.append(None)
                return lines
            line = bytes(self.buf[:nl])
            del self.buf[:nl + 1]
            self.scanned = 0
            if self.skipping:
                self.skipping = False
            elif len(line) > self.limit:
                lines.append(None)
            else:
                lines.append(line)


def _text(value, limit):
    """A string field from the worker: a str cut to `limit`, or None."""
    return value[:limit] if isinstance(value, str) else None


def validate_reply(reply, caps):
    """What the worker reported, checked and capped field by field: user code runs in
    that process and can write anything onto its result pipe. None when malformed."""
    if not isinstance(reply, dict) or not isinstance(reply.get("id"), int):
        return None
    out = {"id": reply["id"], "error": None, "value": None, "value_truncated": False,
           "images": [], "images_truncated": bool(reply.get("images_truncated")), "note": None,
           "displays": [], "displays_truncated": False, "exit_status": None}
    status = reply.get("exit_status")
    if isinstance(status, int) and not isinstance(status, bool):
        out["exit_status"] = status & 0xFF
    err = reply.get("error")
    if err is not None:
        if not isinstance(err, dict):
            return None
        message = err.get("message") if isinstance(err.get("message"), str) else ""
        tb = err.get("traceback") if isinstance(err.get("traceback"), str) else None
        line = err.get("line")
        out["error"] = {
            "name": _text(err.get("name"), caps.name) or "Exception",
            "message": message[: caps.message],
            "traceback": None if tb is None else tb[: caps.traceback],
            "line": _small_int(line),
            "offset": _small_int(err.get("offset")),
            "truncated": bool(err.get("truncated")) or len(message) > caps.message
            or (tb is not None and len(tb) > caps.traceback),
        }
    value = reply.get("value")
    if isinstance(value, str):
        out["value"] = value[: caps.value]
        out["value_truncated"] = bool(reply.get("value_truncated")) or len(value) > caps.value
    images = reply.get("images")
    total = 0
    for img in images if isinstance(images, list) else ():
        data = img.get("data") if isinstance(img, dict) else None
        if not isinstance(data, str) or img.get("mime") != "image/png" \
                or len(out["images"]) >= caps.images:
            out["images_truncated"] = True
            continue
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            out["images_truncated"] = True
            continue
        if not raw.startswith(b"\x89PNG\r\n\x1a\n") or total + len(raw) > caps.image_bytes:
            out["images_truncated"] = True
            continue
        total += len(raw)
        out["images"].append({"mime": "image/png", "data": data})
    note = reply.get("agent_note")
    if isinstance(note, str):
        out["note"] = note[: caps.note]
    out["displays"], out["displays_truncated"] = _valid_displays(reply.get("displays"), caps)
    return out


def _valid_matches(raw, rid):
    """Completions from the worker: strings only, at most 200 of at most 1 KiB."""
    matches = raw.get("matches") if isinstance(raw, dict) and raw.get("id") == rid else None
    if not isinstance(matches, list):
        return None
    return {"id": rid, "matches": [m[:1024] for m in matches[:200] if isinstance(m, str)]}


def _input_status(code):
    """Whether REPL input is a complete statement, as Python's own REPL decides
    (codeop): "complete", "incomplete" (more lines needed) or "invalid"."""
    if not isinstance(code, str) or len(code) > 1 << 16:
        return "invalid"
    import codeop  # the supervisor's sys.path holds only the interpreter's own library

    compiler = codeop.CommandCompiler()
    compiler.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "incomplete" if compiler(code, "<input>", "single") is None else "complete"
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
        return "invalid"


def _small_int(value):
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31
    return value if ok else None


def _valid_displays(displays, caps):
    """Display bundles from the worker: known MIME types only, each form and the total
    within their caps, PNGs that are PNGs. Returns (bundles, whether some were cut)."""
    out, cut, total = [], False, 0
    for bundle in displays if isinstance(displays, list) else ():
        if not isinstance(bundle, dict) or len(out) >= caps.displays:
            cut = True
            continue
        clean = {}
        for mime, data in bundle.items():
            limit = caps.mime.get(mime)
            if limit is None or not isinstance(data, str) or len(data) > limit \
                    or total + len(data) > caps.display_bytes:
                cut = True
                continue
            if mime == "image/png":
                try:
                    if not base64.b64decode(data, validate=True).startswith(b"\x89PNG\r\n\x1a\n"):
                        raise ValueError("not a PNG")
                except ValueError:
                    cut = True
                    continue
            total += len(data)
            clean[mime] = data
        if "text/plain" in clean:
            out.append(clean)
        else:
            cut = True
    return out, cut


class Supervisor:
    """Serves the host's requests on the control channel; owns the worker."""

    def __init__(self, config):
        self.config = config
        self.caps = Caps(config)
        self.grace = float(config.get("interrupt_grace", 2.0))
        # The control channel moves off fds 0/1, which then point at /dev/null.
        self.ctl_in = os.dup(0)
        self.ctl_out = os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        os.set_blocking(self.ctl_in, False)
        request_cap = int(config.get("request_cap", 0)) or (self.caps.code * 6 + (1 << 20))
        self.requests = LineReader(request_cap)
        self.worker = None
        self.run = None
        self.closing = False
        self.reap = []
        self.mirror = None
        # Set when the worker died between runs: the next result says state was lost.
        self.lost_since_last_run = False

    # -- channel

    def send(self, msg):
        data = encode_message(msg)
        os.set_blocking(self.ctl_out, True)
        while data:
            data = data[os.write(self.ctl_out, data):]

    # -- worker lifecycle

    def start_worker(self):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # Objects made so far are left out of the collector's passes: it never writes to
        # their pages, which then stay shared with the worker (less memory per session).
        gc.freeze()
        pid = _fork_retrying()
        if pid == 0:
            for fd in (cmd_w, res_r, out_r, err_r, self.ctl_in, self.ctl_out):
                os.close(fd)
            _worker_main((cmd_r, res_w, out_w, err_w), self.config)
        for fd in (cmd_r, res_w, out_w, err_w):
            os.close(fd)
        for fd in (res_r, out_r, err_r, cmd_w):
            os.set_blocking(fd, False)
        # A reply can hold every capped field, JSON-escaped: anything longer is forged.
        limit = 7 * (self.caps.value + self.caps.message + self.caps.traceback + self.caps.note) \
            + self.caps.image_bytes * 2 + (1 << 20)
        self.worker = {"pid": pid, "cmd": cmd_w, "res": res_r, "out": out_r, "err": err_r,
                       "replies": LineReader(limit), "outbox": b""}
        self.reap = []

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
                self.finish_lost(kind=KIND_CRASHED, name="Restarted",
                                 message="the session was restarted during the run", code=EXIT_KILLED)
            self.replace_worker()
            self.lost_since_last_run = False  # asked for: the caller knows state is gone
            self.send({"id": rid, "op": "ok", "pid": self.worker["pid"]})
        elif op == "complete":
            # Names for the REPL's tab key: asked of the worker like a short run.
            if self.run is not None:
                self.send({"id": rid, "op": "error", "message": "a run is in progress"})
                return
            self.start_run({"id": rid, "code": "", "timeout": 2, "worker_op": "complete",
                            "text": req.get("text")})
            self.run["complete"] = True
        elif op == "is_complete":
            self.send(dict(id=rid, op="ok", status=_input_status(req.get("code"))))
        elif op == "ping":
            self.send({"id": rid, "op": "ok", "busy": self.run is not None})
        elif op in FILE_OPS:
            self.send(file_op(op, req, self.config))
        elif op in ("sync_begin", "sync", "sync_forget"):
            self.send(self.sync_op(op, req))
        elif op == "close":
            self.kill_everything()
            self.send({"id": rid, "op": "ok"})
            self.closing = True
        else:
            self.send({"id": rid, "op": "error", "message": "unknown op %r" % (op,)})

    def sync_op(self, op, req):
        rid = req.get("id")
        if op == "sync_begin":
            self.mirror = Mirror(req.get("roots") or [], int(req.get("max_entries", 10000)),
                                 int(req.get("max_depth", 64)), int(req.get("max_path", 1024)))
            self.mirror.scan()
            return {"id": rid, "op": "ok"}
        if self.mirror is None:
            return {"id": rid, "op": "error", "message": "no read-write exposures are mirrored"}
        if op == "sync_forget":
            self.mirror.forget(req.get("paths") or [])
            return {"id": rid, "op": "ok"}
        page = self.mirror.changes(bool(req.get("next")), int(req.get("page", 2000)))
        page.update(id=rid, op="ok")
        return page

    def start_run(self, req):
        code = req.get("code")
        if not isinstance(code, str):
            self.send({"id": req.get("id"), "op": "error", "message": "a run needs code (a string)"})
            return
        if len(code) > self.caps.code:
            self.send({"id": req.get("id"), "op": "error",
                       "message": "code of %d characters is over the %d-byte cap (max_code_bytes)"
                       % (len(code), self.caps.code)})
            return
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
            "out": Capture(self.caps.output),
            "err": Capture(self.caps.output),
            "oom_before": _oom_kills(),
            "reply": None,
            "stream": bool(req.get("stream")),
            "decoders": {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("out", "err")},
        }
        msg = json.dumps({"id": req["id"], "code": code, "reap": self.reap, "stream": bool(req.get("stream")),
                          "script": req.get("script") if isinstance(req.get("script"), dict) else None,
                          "op": req.get("worker_op", "run"), "text": req.get("text"),
                          "filename": req.get("filename") if isinstance(req.get("filename"), str) else None,
                          }).encode() + b"\n"
        self.reap = []
        self.to_worker(msg)

    def to_worker(self, data):
        """Queues data for the worker's command pipe and writes what the pipe takes now;
        the main loop writes the rest as the pipe drains. A worker that stops reading
        (stopped, or never back in its loop) never blocks the supervisor."""
        self.worker["outbox"] += data
        self.flush_to_worker()

    def flush_to_worker(self):
        worker = self.worker
        while worker is not None and worker["outbox"]:
            try:
                sent = os.write(worker["cmd"], worker["outbox"])
            except BlockingIOError:
                return
            except OSError:
                worker["outbox"] = b""  # gone: its death is noticed on its result pipe
                return
            worker["outbox"] = worker["outbox"][sent:]

    def interrupt(self):
        self.settle_trace()
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
                except OSError:
                    break
                if not chunk:
                    break
                if not discard and self.run is not None:
                    self.captured(key, chunk)

    def on_output(self, key):
        try:
            chunk = os.read(self.worker[key], READ_CHUNK)
        except OSError:
            return
        if chunk and self.run is not None:
            self.captured(key, chunk)

    def captured(self, key, chunk):
        """Keeps output of the run within its cap and, for a streamed run, sends what was
        kept to the host at once (decoded across chunk boundaries)."""
        kept = self.run[key].add(chunk)
        decoder = self.run["decoders"].get(key) if self.run.get("stream") else None
        if decoder is not None and kept:
            text = decoder.decode(kept)
            if text:
                self.send({"id": self.run["id"], "op": "output",
                           "stream": "stdout" if key == "out" else "stderr", "data": text})

    def on_result(self):
        """Reads everything the result pipe holds now. Returns False when the worker died
        (its death is then handled)."""
        while self.worker is not None:
            try:
                chunk = os.read(self.worker["res"], READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                chunk = b""
            if not chunk:
                self.on_worker_death()
                return False
            self.take_replies(chunk)
        return True

    def take_replies(self, chunk):
        for line in self.worker["replies"].feed(chunk):
            if line is None or self.run is None:
                continue  # oversize (forged) or between runs: never a result
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            if isinstance(raw, dict) and "barrier" in raw:
                if raw["barrier"] == self.run.get("barrier"):
                    self.run["barrier_ok"] = True
                continue
            if self.run.get("complete"):
                self.run["reply"] = _valid_matches(raw, self.run["id"])
                continue
            if isinstance(raw, dict) and "event" in raw:
                # A display() during a streamed run: checked like the result's displays.
                if not self.run.get("stream"):
                    continue
                self.drain(discard=False)
                shown, _cut = _valid_displays([raw.get("bundle")], self.caps)
                if shown and raw.get("id") == self.run["id"]:
                    self.send({"id": self.run["id"], "op": "display", "bundle": shown[0]})
                if not self.worker["outbox"]:
                    # Go on: one byte a waiting display() reads. Forged events send many;
                    # a worker that is not reading gets none once the pipe is full.
                    try:
                        os.write(self.worker["cmd"], b"\x06")
                    except OSError:
                        pass
                continue
            reply = validate_reply(raw, self.caps)
            if reply is not None and reply["id"] == self.run["id"]:
                # Believed only once the worker is back in its loop (see check_done).
                self.run["reply"] = reply

    def check_done(self):
        """Finishes the run when a reply came and the worker's main thread is back to
        reading commands: a reply forged by user code that goes on running does not end
        the run nor stop its clock."""
        if self.run is None or self.run["reply"] is None:
            return
        idle = self.worker_idle()
        if idle is False:
            return
        if idle is None and not self.barrier_passed():
            return
        # Back in its loop: whatever the worker wrote before is in the pipe now. The
        # last reply read wins (the real one comes after any forged one).
        if not self.on_result() or self.run is None or self.run["reply"] is None:
            return
        reply = self.run["reply"]
        if self.run.get("complete"):
            self.run = None
            self.send({"id": reply["id"], "op": "ok", "matches": reply["matches"]})
            return
        self.finish_ok(reply)

    def worker_idle(self):
        """Whether the worker's main thread is blocked reading its command pipe: True,
        False, or None where neither /proc nor ptrace can say. ptrace stops the worker
        for a moment, so it is asked again after a growing pause (at most 20 ms)."""
        pid = self.worker["pid"]
        idle = _blocked_reading(pid)
        if idle is not None:
            return idle
        run = self.run
        now = time.monotonic()
        if now < run.get("probe_at", 0.0):
            return False
        idle, status, asked = _ptrace_blocked_reading(pid, self.worker.get("asked", False))
        self.worker["asked"] = asked
        if status is not None:
            self.worker["status"] = status  # reaped by the probe: on_worker_death reads it
        if idle is False:
            gap = min(run.get("probe_gap", 0.0001) * 2, 0.02)
            run.update(probe_gap=gap, probe_at=now + gap)
        return idle

    def settle_trace(self):
        """Lets the worker go on if a ptrace stop asked for earlier has come since: a
        stopped worker would neither run nor take its interrupt."""
        if self.worker is None or not self.worker.get("asked"):
            return
        _, status, asked = _ptrace_blocked_reading(self.worker["pid"], True, wait=0)
        self.worker["asked"] = asked
        if status is not None:
            self.worker["status"] = status

    def barrier_passed(self):
        """Where neither /proc nor ptrace says what the worker's main thread is doing
        (gVisor on another architecture than x86_64): a nonce sent down the command
        pipe, answered by the worker's loop once the run is over. Until the answer, the
        run goes on. Weaker: a thread of user code can read the pipe and answer."""
        run = self.run
        if run.get("barrier_ok"):
            return True
        if run.get("barrier") is None:
            run["barrier"] = int.from_bytes(os.urandom(8), "big")
            self.to_worker((json.dumps({"op": "barrier", "nonce": run["barrier"]}) + "\n").encode())
        return False

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
        self.reap = _cull_if_near_limit(self.config.get("pids_limit"),
                                        {1, os.getpid(), self.worker["pid"]},
                                        int(self.config.get("sandbox_uid", os.getuid())))
        if self.reap:
            res["stderr"] += ("\n[biocage] the run left %d processes and the sandbox was at its "
                              "process limit; they were killed\n" % len(self.reap))
        if reply["note"]:
            res["stderr"] += "\n[biocage] %s\n" % reply["note"]
        err = reply["error"]
        res.update(value=reply["value"], value_truncated=reply["value_truncated"],
                   images=reply["images"], images_truncated=reply["images_truncated"],
                   displays=reply["displays"], displays_truncated=reply["displays_truncated"])
        status = reply["exit_status"]
        if err is None and status:
            res.update(success=False, exit_code=status, error={
                "kind": KIND_EXIT, "name": "SystemExit", "message": "the code called sys.exit(%d)" % status,
                "traceback": None})
        elif err is None:
            res.update(success=True, exit_code=EXIT_OK, error=None)
        elif err["name"] == "KeyboardInterrupt" and self.run["interrupted"] \
                and not self.run["host_interrupt"]:
            err.update(kind=KIND_TIMEOUT, message="execution exceeded the %.3g s timeout and was interrupted"
                       % self.run["timeout"])
            res.update(success=False, exit_code=EXIT_TIMEOUT, error=err)
        elif err["name"] == "MemoryError":
            err["kind"] = KIND_OOM
            res.update(success=False, exit_code=EXIT_KILLED, error=err)
        else:
            err["kind"] = KIND_EXCEPTION
            res.update(success=False, exit_code=EXIT_EXCEPTION, error=err)
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
        status = self.worker.get("status")
        if status is None:
            status = _reap_worker(pid)
        run = self.run
        if run is not None:
            self.drain(discard=False)
            oom_after = _oom_kills()
            oom = run["oom_before"] is not None and oom_after is not None and oom_after > run["oom_before"]
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                if oom:
                    self.finish_lost(KIND_OOM, "MemoryError",
                                     "the worker was killed by the out-of-memory killer "
                                     "(memory limit reached); earlier state is lost", EXIT_KILLED)
                else:
                    self.finish_lost(KIND_CRASHED, signal.Signals(sig).name,
                                     "the worker was killed by signal %s; earlier state is lost"
                                     % signal.Signals(sig).name, EXIT_KILLED)
            elif os.WEXITSTATUS(status) == 0:
                # sys.exit(0) / os._exit(0): the program ended normally; its state ends with it.
                res = self.base_result()
                self.lost_since_last_run = False
                res.update(success=True, exit_code=EXIT_OK, state_lost=True, value=None, images=[],
                           error=None)
                self.run = None
                self.send(res)
            else:
                code = os.WEXITSTATUS(status)
                # The status the program chose (os._exit(9) is 9), as python's own.
                self.finish_lost(KIND_CRASHED, "SystemExit",
                                 "the worker exited with status %d; earlier state is lost" % code,
                                 code)
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
            kind, name, code = KIND_CRASHED, "Killed", EXIT_KILLED
            msg = "the run ignored an interrupt and was killed"
        else:
            kind, name, code = KIND_TIMEOUT, "TimeoutError", EXIT_TIMEOUT
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

    def serve(self, hardening):
        self.start_worker()
        hello = {"op": "hello", "agent_version": AGENT_VERSION, "python": sys.version.split()[0],
                 "pid": os.getpid(), "worker_pid": self.worker["pid"],
                 "rlimits": self.config.get("rlimits") or {}, "oom_counter": _oom_kills() is not None}
        hello.update(hardening)
        self.send(hello)
        while not self.closing:
            fds = [self.ctl_in]
            if self.worker is not None:
                fds += [self.worker["res"], self.worker["out"], self.worker["err"]]
            timeout = None
            if self.run is not None:
                timeout = max(0.0, self.run["deadline"] - time.monotonic())
                if self.run["reply"] is not None and self.run.get("barrier") is None:
                    # The worker is about to be back in its loop (or, under ptrace, is
                    # asked again when its pause is over).
                    pause = self.run.get("probe_at", 0.0) - time.monotonic()
                    timeout = min(timeout, max(0.0002, pause))
            if self.worker is not None and self.worker.get("asked"):
                timeout = 0.01 if timeout is None else min(timeout, 0.01)  # see settle_trace
            pending = [self.worker["cmd"]] if self.worker is not None and self.worker["outbox"] else []
            try:
                ready, writable, _ = select.select(fds, pending, [], timeout)
            except InterruptedError:
                continue
            self.settle_trace()
            if writable:
                self.flush_to_worker()
            if self.worker is not None:
                for key in ("out", "err"):
                    if self.worker[key] in ready:
                        self.on_output(key)
                if self.worker["res"] in ready:
                    self.on_result()
            self.check_done()
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
        for line in self.requests.feed(chunk):
            if line is None:
                self.send({"id": None, "op": "error",
                           "message": "request over %d bytes dropped" % self.requests.limit})
                continue
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.send({"id": None, "op": "error", "message": "malformed request: %s" % exc})
                continue
            try:
                self.handle_request(req)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                self.send({"id": req.get("id"), "op": "error", "message": "bad request: %s" % exc})
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

FILE_OPS = ("write_file", "read_file", "list_dir", "make_dir")


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


def _is_entry(fd, name, dirfd):
    """True when fd is what name in dirfd is now, and name is no symbolic link. O_NOFOLLOW
    alone is not enough: gVisor opens a link to a folder with O_DIRECTORY | O_NOFOLLOW."""
    opened = os.fstat(fd)
    entry = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    return (not stat.S_ISLNK(entry.st_mode)
            and (entry.st_dev, entry.st_ino) == (opened.st_dev, opened.st_ino))


def _open_dir(name, dirfd):
    """Opens the folder name in dirfd, never through a symbolic link (ELOOP)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
    if not _is_entry(fd, name, dirfd):
        os.close(fd)
        raise OSError(errno.ELOOP, "a symbolic link is not followed", name)
    return fd


def _open_nofollow(path, flags, mode=0o644):
    """Opens path walking each component with O_NOFOLLOW, so no planted symlink is followed."""
    parts = [p for p in path.split("/") if p]
    dirfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                nxt = _open_dir(part, dirfd)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                os.mkdir(part, 0o755, dir_fd=dirfd)
                nxt = _open_dir(part, dirfd)
                _give(nxt)
            os.close(dirfd)
            dirfd = nxt
        if flags & os.O_DIRECTORY and flags & os.O_CREAT:
            try:
                os.mkdir(parts[-1], mode, dir_fd=dirfd)
            except FileExistsError:
                pass
            flags &= ~os.O_CREAT
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dirfd)
        if not _is_entry(fd, parts[-1], dirfd):
            os.close(fd)
            raise OSError(errno.ELOOP, "a symbolic link is not followed", parts[-1])
        _give(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode) and not flags & os.O_DIRECTORY:
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file (FIFOs, devices and sockets are refused)")
        os.set_blocking(fd, True)
        return fd
    finally:
        os.close(dirfd)


def _give(fd):
    """Gives what the supervisor just made to the sandbox user, where its filesystem
    ids are not that user's already (see FILE_OWNER)."""
    if FILE_OWNER and os.fstat(fd).st_uid == os.getuid():
        os.fchown(fd, FILE_OWNER[0], FILE_OWNER[1])


def _has_link(path):
    """True when a component of path is a symbolic link (for the error message only)."""
    parts = [p for p in path.split("/") if p]
    return any(os.path.islink("/" + "/".join(parts[: i + 1])) for i in range(len(parts)))


def _write_all(fd, data, offset):
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def file_op(op, req, config):
    rid = req.get("id")
    path = req.get("path")
    if isinstance(req.get("p64"), str):
        # A path as bytes (base64): names that are not UTF-8 stay exact.
        path = os.fsdecode(base64.b64decode(req["p64"]))
    problem = _check_path(path, config)
    if problem:
        return {"id": rid, "op": "error", "message": problem}
    try:
        if op == "write_file":
            data = base64.b64decode(req.get("data", ""))
            offset = int(req.get("offset", 0))
            flags = os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC)
            fd = _open_nofollow(path, flags, int(req.get("mode", 0o644)) & 0o777)
            try:
                _write_all(fd, data, offset)
            finally:
                os.close(fd)
            return {"id": rid, "op": "ok", "size": len(data)}
        if op == "make_dir":
            fd = _open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CREAT,
                                int(req.get("mode", 0o755)) & 0o777)
            os.close(fd)
            return {"id": rid, "op": "ok"}
        if op == "read_file":
            cap = int(req.get("max_bytes", 16 << 20))
            offset = int(req.get("offset", 0))
            length = req.get("length")
            fd = _open_nofollow(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                want = size - offset if length is None else min(int(length), max(0, size - offset))
                if want > cap:
                    return {"id": rid, "op": "error",
                            "message": "file %s is %d bytes, over the %d-byte cap" % (path, size, cap)}
                chunks, total = [], 0
                while total < want:
                    chunk = os.pread(fd, min(READ_CHUNK, want - total), offset + total)
                    if not chunk:
                        break
                    total += len(chunk)
                    chunks.append(chunk)
                if length is None and os.pread(fd, 1, offset + total):
                    return {"id": rid, "op": "error",
                            "message": "file %s grew over the %d-byte cap" % (path, cap)}
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


# ------------------------------------------------------------ read-write exposures


def _b64(raw):
    return base64.b64encode(raw).decode()


class Mirror:
    """What sandbox code changed in the read-write exposures since the host last looked.

    Each exposure is a size-capped tmpfs inside the sandbox; the host copies what
    changed back to its own folder through this channel, so nothing the sandbox writes
    ever lives on a host filesystem. A scan visits at most `max_entries` entries, never
    deeper than `max_depth` folders, and never follows a link: its cost is bounded
    whatever sandbox code made there."""

    def __init__(self, roots, max_entries, max_depth, max_path):
        self.roots = [os.fsencode(r) for r in roots if isinstance(r, str)]
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.max_path = max_path
        self.known = {}
        # Folders that were empty at the last scan: (ino, mtime_ns, ctime_ns). One that
        # still has them is still empty, and is not opened again (under gVisor every
        # system call is dear, and a flood of empty folders is the costly shape).
        self.empty = {}
        self.pending = []
        self.notes = {}
        self.last_notes = {"skipped": 0, "too_deep": 0, "too_long": 0, "too_many": False}

    def scan(self):
        """The entries below every root now: {(root, rel): stamp}; notes what was left out."""
        found = {}
        empty = {}
        notes = {"skipped": 0, "too_deep": 0, "too_long": 0, "too_many": False}
        for root in self.roots:
            try:
                rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            # Depth first, holding one descriptor per level (at most max_depth open).
            stack = [(rootfd, b"", 0, self._list(rootfd))]
            while stack and not notes["too_many"]:
                fd, rel, depth, entries = stack[-1]
                if not entries:
                    os.close(fd)
                    stack.pop()
                    continue
                entry = entries.pop()
                if len(found) >= self.max_entries:
                    notes["too_many"] = True
                    break
                name = os.fsencode(entry.name)
                child = rel + b"/" + name if rel else name
                if len(child) > self.max_path:
                    notes["too_long"] += 1
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)  # from the listing: no stat
                    st = None if is_dir else entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if depth + 1 > self.max_depth:
                        notes["too_deep"] += 1
                        continue
                    found[(root, child)] = ("d", entry.inode(), 0, 0, 0, 0o700)
                    try:
                        dst = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    stamp = (dst.st_ino, dst.st_mtime_ns, dst.st_ctime_ns)
                    if self.empty.get((root, child)) == stamp:
                        empty[(root, child)] = stamp
                        continue
                    try:
                        sub = _open_dir(entry.name, fd)
                    except OSError:
                        continue
                    listed = self._list(sub)
                    if not listed:
                        empty[(root, child)] = stamp
                    stack.append((sub, child, depth + 1, listed))
                elif stat.S_ISREG(st.st_mode):
                    found[(root, child)] = ("f", st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                            st.st_mode & 0o777)
                else:
                    notes["skipped"] += 1  # links, FIFOs, sockets, devices: never copied
            for fd, _rel, _depth, _entries in stack:
                os.close(fd)
        # What was left out is said when it changes, not after every run.
        self.notes = notes if notes != self.last_notes else {}
        self.last_notes = notes
        changes = []
        for key, st in found.items():
            old = self.known.get(key)
            if old == st:
                continue
            if old is not None and old[0] != st[0]:
                changes.append(("gone", key, old))
            changes.append(("dir" if st[0] == "d" else "file", key, st))
        for key, old in self.known.items():
            if key not in found:
                changes.append(("gone", key, old))
        # Folders before what they hold; removals deepest first.
        def order(change):
            depth = change[1][1].count(b"/")
            return (change[0] == "gone", -depth if change[0] == "gone" else depth)

        changes.sort(key=order)
        self.known = found
        self.empty = empty
        return changes

    def _list(self, fd):
        """The entries of the folder open at fd, reversed so that pop() goes in order."""
        try:
            with os.scandir(fd) as it:
                entries = list(it)
        except OSError:
            return []
        entries.reverse()
        return entries

    def changes(self, more, page):
        """One page of changes: a new scan, or (`more`) the rest of the last one."""
        if not more:
            self.pending = self.scan()
        head, self.pending = self.pending[:page], self.pending[page:]
        items = [{"kind": kind, "root": self.roots.index(root), "p64": _b64(rel),
                  "size": st[2], "mode": st[5]}
                 for kind, (root, rel), st in head]
        out = {"changes": items, "more": bool(self.pending)}
        if not more:
            out.update(self.notes)
        return out

    def forget(self, paths):
        """Entries the host could not copy: seen as changed again by the next scan."""
        for item in paths:
            try:
                key = (self.roots[int(item["root"])], base64.b64decode(item["p64"]))
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            self.known.pop(key, None)


# --------------------------------------------------------------------------- main


def main(argv):
    # Agent processes never look for anything in the places sandbox code can write.
    os.chdir("/")
    if len(argv) >= 2 and argv[1] == SERVE_MARK:
        config = json.loads(argv[2]) if len(argv) > 2 else {}
        separated = _separate_supervisor(config)
        hardening = {"privilege_separated": separated, "no_new_privs": _harden_self(),
                     "seccomp": _forbid_namespaces(config.get("deny_syscalls") or ())}
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        Supervisor(config).serve(hardening)
    else:
        sys.stderr.write("usage: %s CONFIG_JSON\n" % SERVE_MARK)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
