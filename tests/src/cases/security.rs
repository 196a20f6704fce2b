//! Isolation: no network, read-only filesystems, no privilege, nothing of the host or of
//! other sessions visible, no devices.

use biocage_core::SandboxRuntime;

use crate::harness::{config_builder, ok, run, session};

/// Runs `code` in a fresh default session and returns its stdout (which must succeed).
async fn probe(rt: &dyn SandboxRuntime, code: &str) -> String {
    let s = session(rt).await;
    let r = run(s.as_ref(), code).await;
    let out = ok(&r).to_string();
    s.close().await.unwrap();
    out
}

/// No network: no interface but lo, no route, TCP/UDP/DNS fail at once, raw sockets refused.
pub async fn no_network(rt: &dyn SandboxRuntime) {
    let out = probe(
        rt,
        r#"
import socket
print('ifaces', sorted(n for _, n in socket.if_nameindex()))
routes = open('/proc/net/route').read().splitlines()[1:]
print('routes', len(routes))
def attempt(name, fn):
    try:
        fn()
        print(name, 'OPEN')
    except OSError as e:
        print(name, 'blocked', type(e).__name__)
attempt('tcp', lambda: socket.create_connection(('192.0.2.1', 80), timeout=3))
attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53)))
attempt('dns', lambda: socket.getaddrinfo('example.com', 80))
attempt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt('tcp6', lambda: socket.create_connection(('2001:db8::1', 80), timeout=3))
"#,
    )
    .await;
    assert!(out.contains("ifaces ['lo']"), "{out}");
    assert!(
        out.contains("routes 0"),
        "no route, not even to a gateway: {out}"
    );
    assert!(!out.contains("OPEN"), "{out}");
    for name in ["tcp", "udp", "dns", "raw", "tcp6"] {
        assert!(out.contains(&format!("{name} blocked")), "{name}: {out}");
    }
}

/// Network access only when asked for: then an interface besides lo exists.
pub async fn network_only_when_enabled(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.network(true).build().unwrap();
    let s = match rt.create_session(&config).await {
        Ok(s) => s,
        Err(e @ biocage_core::Error::IsolationUnavailable { .. }) => {
            // The isolation refuses network sessions, and says so before starting.
            crate::harness::skip(rt.name(), "network_only_when_enabled", &e.to_string());
            return;
        }
        Err(e) if rt.name().starts_with("podman") => {
            // Rootless networking needs slirp4netns with /dev/net/tun, which this kind of
            // machine does not give to unprivileged users.
            crate::harness::skip(
                rt.name(),
                "network_only_when_enabled",
                &format!("network on could not start here: {e}"),
            );
            return;
        }
        Err(e) => panic!("network on: {e}"),
    };
    let r = run(
        s.as_ref(),
        "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))",
    )
    .await;
    assert_ne!(
        ok(&r).trim(),
        "['lo']",
        "an interface besides lo when network is on"
    );
    let info = s.info().await.unwrap();
    let net = info.limits.iter().find(|l| l.name == "network").unwrap();
    assert_eq!(net.value, "on");
    s.close().await.unwrap();
}

/// Read-only root and no way to remount it.
pub async fn read_only_root_cannot_be_remounted(rt: &dyn SandboxRuntime) {
    let out = probe(
        rt,
        r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
for path in ['/etc/evil', '/usr/lib/evil', '/opt/evil', '/evil']:
    try:
        open(path, 'w')
        print('WROTE', path)
    except OSError as e:
        print(path, errno.errorcode[e.errno])
root = [l.split()[3] for l in open('/proc/self/mounts') if l.split()[1] == '/']
print('root options', root[-1].split(',') if root else None)
MS_REMOUNT, MS_BIND = 32, 4096
rc = libc.mount(b'none', b'/', None, MS_REMOUNT | MS_BIND, None)
print('remount', rc, errno.errorcode.get(ctypes.get_errno()))
rc = libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None)
print('mount', rc, errno.errorcode.get(ctypes.get_errno()))
"#,
    )
    .await;
    assert!(!out.contains("WROTE"), "{out}");
    // The kernel answers EROFS; gVisor checks permissions first (EACCES for this uid):
    // the mount table says the root is read-only either way.
    assert_eq!(
        out.matches("EROFS").count() + out.matches("EACCES").count(),
        4,
        "{out}"
    );
    assert!(out.contains("root options ['ro'"), "{out}");
    assert!(out.contains("remount -1 EPERM"), "{out}");
    assert!(out.contains("mount -1 EPERM"), "{out}");
}

/// No privilege: no capabilities, no_new_privs, setuid gives nothing, privileged
/// syscalls fail, the supervisor cannot be traced.
pub async fn no_privilege(rt: &dyn SandboxRuntime) {
    let out = probe(
        rt,
        r#"
import ctypes, errno, os, subprocess
status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb'):
    print(k, status.get(k, 'absent').strip())
print('uid', os.getuid(), os.geteuid())
libc = ctypes.CDLL(None, use_errno=True)
# From the kernel itself (gVisor's /proc/self/status has no NoNewPrivs line).
print('NoNewPrivs', libc.prctl(39, 0, 0, 0, 0))
def sys(name, nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(nr, *args)
    print(name, rc, errno.errorcode.get(ctypes.get_errno()))
sys('unshare', 272, 0x10000000 | 0x00020000)
sys('keyctl', 250, 1, None)
sys('bpf', 321, 5, None, 0)
attr = (ctypes.c_char * 128)()
attr[0] = 1
attr[4] = 128
sys('perf_event_open', 298, attr, 0, -1, -1, 0)
# io_uring: a second system call interface that seccomp cannot look into.
params = (ctypes.c_char * 120)()
sys('io_uring_setup', 425, 8, params)
sys('ptrace_attach_supervisor', 101, 16, os.getppid(), None, None)
sys('setuid0', 105, 0)
# The i386 ABI (int 0x80) from a 64-bit process: unshare(CLONE_NEWUSER) must not get past.
i386 = r"""
import ctypes, mmap
code = bytes.fromhex('b836010000' 'bb00000010' 'cd80' 'c3')
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print(ctypes.CFUNCTYPE(ctypes.c_int)(addr)())
"""
if os.uname().machine == 'x86_64':
    r = subprocess.run(['python3', '-c', i386], capture_output=True, text=True)
    print('i386_unshare', r.stdout.strip() or 'signal %d' % -r.returncode)
su = [p for p in ('/usr/bin/su', '/bin/su') if os.path.exists(p)]
if su:
    st = os.stat(su[0])
    r = subprocess.run([su[0], 'root', '-c', 'id -u'], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    print('su setuid', bool(st.st_mode & 0o4000), 'rc', r.returncode, 'out', repr(r.stdout))
"#,
    )
    .await;
    for want in [
        "CapEff 0000000000000000",
        "CapPrm 0000000000000000",
        "CapBnd 0000000000000000",
        "NoNewPrivs 1",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    for call in [
        "unshare",
        "keyctl",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "ptrace_attach_supervisor",
        "setuid0",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{call} ")))
            .unwrap_or_default();
        assert!(line.contains(" -1 "), "{call} must fail: {line}");
        assert!(
            ["EPERM", "EACCES", "ENOSYS"]
                .iter()
                .any(|e| line.ends_with(e)),
            "{call} refused for lack of privilege: {line}"
        );
    }
    if let Some(line) = out.lines().find(|l| l.starts_with("i386_unshare ")) {
        // -1 is -EPERM; -38 (-ENOSYS) is gVisor, which has no 32-bit system calls; a
        // signal means the kernel has no 32-bit emulation: refused every way.
        assert!(
            line == "i386_unshare -1"
                || line == "i386_unshare -38"
                || line.starts_with("i386_unshare signal"),
            "{line}"
        );
    }
    if let Some(line) = out.lines().find(|l| l.starts_with("su ")) {
        assert!(!line.contains("'0\\n'"), "setuid su gave root: {line}");
        assert!(!line.contains("rc 0 "), "{line}");
    }
}

/// Nothing of the host leaks in: its environment, the engine's socket, kernel memory and
/// keys, other sessions' files and processes.
pub async fn nothing_of_the_host_or_other_sessions_leaks(rt: &dyn SandboxRuntime) {
    // A canary in this process's environment before the sessions exist; no other test
    // reads it.
    let canary = format!("canary-{}", std::process::id());
    std::env::set_var("BIOCAGE_HOST_CANARY", &canary);
    let a = session(rt).await;
    let b = session(rt).await;
    ok(&run(
        a.as_ref(),
        "import subprocess\nopen('/tmp/secret-a', 'w').write('a')\nopen('/workspace/secret-a', 'w').write('a')\np = subprocess.Popen(['sleep', '300'])",
    )
    .await);
    let r = run(
        b.as_ref(),
        &format!(
            r#"
import os, glob
env = open('/proc/self/environ', 'rb').read()
print('canary', b'{canary}' in env or any('{canary}' in v for v in os.environ.values()))
print('init-env', end=' ')
try:
    print(b'{canary}' in open('/proc/1/environ', 'rb').read())
except OSError as e:
    print('unreadable')
socks = [p for p in ['/var/run/docker.sock', '/run/docker.sock', '/run/podman/podman.sock'] + glob.glob('/run/user/*/podman/*') if os.path.exists(p)]
print('sockets', socks)
print('other files', os.path.exists('/tmp/secret-a'), os.path.exists('/workspace/secret-a'))
cmds = [open(f'/proc/{{p}}/cmdline', 'rb').read() for p in os.listdir('/proc') if p.isdigit()]
print('other sleep', any(c.startswith(b'sleep') for c in cmds))
for path in ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug']:
    try:
        data = open(path, 'rb').read(64)
        print(path, 'empty' if not data else 'READABLE')
    except OSError as e:
        print(path, 'denied')
try:
    open('/proc/sysrq-trigger', 'w').write('h')
    print('sysrq WRITABLE')
except OSError:
    print('sysrq denied')
"#
        ),
    )
    .await;
    let out = ok(&r);
    assert!(out.contains("canary False"), "{out}");
    assert!(!out.contains("init-env True"), "{out}");
    assert!(out.contains("sockets []"), "{out}");
    assert!(out.contains("other files False False"), "{out}");
    assert!(out.contains("other sleep False"), "{out}");
    assert!(!out.contains("READABLE"), "{out}");
    assert!(out.contains("sysrq denied"), "{out}");
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Devices: no memory, kernel log or block devices; mknod fails.
pub async fn no_devices(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let gvisor = s.info().await.unwrap().isolation == biocage_core::Isolation::Gvisor;
    let r = run(
        s.as_ref(),
        r#"
import os, stat, errno
print('devices', sorted(d for d in ['mem', 'kmem', 'port', 'kmsg', 'sda', 'vda', 'nvme0n1', 'loop0', 'fuse', 'net'] if os.path.exists('/dev/' + d)))
blocks = [d for d in os.listdir('/dev') if stat.S_ISBLK(os.lstat('/dev/' + d).st_mode)]
print('block', blocks)
for kind, dev in [(stat.S_IFCHR, os.makedev(1, 1)), (stat.S_IFBLK, os.makedev(8, 0))]:
    try:
        os.mknod('/tmp/node', kind | 0o600, dev)
        print('MKNOD OK')
        try:
            os.close(os.open('/tmp/node', os.O_RDONLY))
            print('NODE OPENED')
        except OSError as e:
            print('open', errno.errorcode[e.errno])
        os.remove('/tmp/node')
    except OSError as e:
        print('mknod', errno.errorcode[e.errno])
if os.path.exists('/dev/net/tun'):
    import fcntl, struct
    try:
        fd = os.open('/dev/net/tun', os.O_RDWR)
        try:
            fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'bc0', 0x0001))  # TUNSETIFF
            print('TUN MADE')
        except OSError as e:
            print('tunsetiff', errno.errorcode[e.errno])
        os.close(fd)
    except OSError as e:
        print('open tun', errno.errorcode[e.errno])
"#,
    )
    .await;
    let out = ok(&r).to_string();
    s.close().await.unwrap();
    assert!(out.contains("block []"), "{out}");
    assert!(!out.contains("NODE OPENED"), "{out}");
    if gvisor {
        // gVisor's own emulated devices (fuse, tun) in its own kernel; nodes made on its
        // tmpfs reach nothing, and no tun interface can be made without privilege.
        assert!(
            out.lines()
                .next()
                .is_some_and(|l| l.strip_prefix("devices ").is_some_and(|d| d == "[]"
                    || d == "['fuse', 'net']"
                    || d == "['fuse']"
                    || d == "['net']")),
            "{out}"
        );
        assert!(!out.contains("TUN MADE"), "{out}");
        return;
    }
    assert!(out.contains("devices []"), "{out}");
    assert!(!out.contains("MKNOD OK"), "{out}");
    assert_eq!(out.matches("mknod EPERM").count(), 2, "{out}");
}
