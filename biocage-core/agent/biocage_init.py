"""BioCage sandbox init (PID 1), stdlib only, Python 3.8+:
`python3 -I -S -c SRC biocage-init GRACE`.

Reaps orphaned processes at once, and exits (ending the container) once no supervisor
has been alive for GRACE seconds, so that a host that vanished leaves nothing running.
Kept apart from the agent and importing next to nothing: one runs in every sandbox, and
what it loads is memory every idle session pays for.
"""

import os
import signal
import sys
import time

SERVE_MARK = b"biocage-serve"


def harden():
    """no_new_privs, and non-dumpable: same-uid sandbox code cannot ptrace PID 1."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervisor_alive():
    """A supervisor started by the engine (an exec: no parent in the container) runs.
    Sandbox code can copy the mark into its own argv, not a parent of 0."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "1":
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                if SERVE_MARK not in f.read().split(b"\0"):
                    continue
            with open("/proc/%s/status" % name) as f:
                if any(line.split() == ["PPid:", "0"] for line in f):
                    return True
        except OSError:
            continue
    return False


def drop_root(uid):
    """Started as root (the container's user, for the supervisor's sake): PID 1 needs
    none of it, and runs as the agent's uid with no capability (0 to another uid clears
    them all)."""
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def main(grace, uid=None):
    os.chdir("/")
    drop_root(uid)
    harden()
    # PID 1 ignores every signal it has no handler for, so sandbox code cannot stop the
    # container from inside. SIGCHLD is blocked and waited for, to reap at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    last_seen = last_check = time.monotonic()
    while True:
        signal.sigtimedwait({signal.SIGCHLD}, 0.5)
        reap_all()
        now = time.monotonic()
        if now - last_check < 0.5:
            continue
        last_check = now
        if supervisor_alive():
            last_seen = now
        elif now - last_seen > grace:
            sys.exit(0)


if __name__ == "__main__":
    main(float(sys.argv[2]) if len(sys.argv) > 2 else 10.0,
         int(sys.argv[3]) if len(sys.argv) > 3 else None)
