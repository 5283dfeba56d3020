"""Build launcher: isolate, limit and supervise ``/bin/sh -c COMMAND``.

Run as ``python -I -S _launch.py FD`` with a fixed minimal environment; FD is
an inherited pipe holding the launch spec ``{"spec": …, "command": …, "env": …}``
in :mod:`marshal` format (written by the same interpreter; ``json`` would cost the
launcher ~10 ms of CPU per build just to import). The launcher reads it to the end
and closes it first thing. (The deployer runs this file's code compiled once,
sent ahead of the spec on the same pipe: ``deployer/sandbox.py``, ``LAUNCHER_BOOT``.)
The build's command and environment never appear on a command line (``ps``) or in the
launcher's own environment: the environment is applied only where the build
shell is executed (``execve`` inside the sandbox, or bubblewrap's ``--clearenv``
and ``--setenv`` read from an ``--args`` pipe), so no variable such as
``LD_PRELOAD`` ever reaches the launcher or bubblewrap. The shell runs
``eval "$BUILDQ_COMMAND"``. It is a standalone file (stdlib only, no buildq
imports) so every step happens in a fresh, single-threaded process, not in a
``preexec_fn`` of the threaded daemon. It imports only what every level needs at
the top (start-up is most of its CPU time); ``socket`` and ``struct`` only where
the ``uid`` level uses them. The spec (built by ``deployer/sandbox.py``)
names the level:

``process``  same uid; rlimits; the launcher stays as a child subreaper, so even
             children that ``setsid`` and double-fork are re-parented to it and
             killed when the build ends or is stopped.
``uid``      (root) new mount, pid, ipc, uts (and, with network off, net)
             namespaces; a private /tmp and /dev/shm; the job directory bound at
             MOUNT; then a separate unprivileged uid with no_new_privs. The
             build's pid 1 is a small init: when the build's shell exits, the
             kernel kills everything left in the namespace.
``bwrap``    bubblewrap: user, pid, ipc, uts, cgroup (and net) namespaces, a
             read-only minimal root, only the job directory writable. As root the
             launcher first drops to a separate uid.

Memory, process and CPU caps: when the spec lists ``cgroup_procs``, the launcher
first writes its own pid into each of them, so the whole build runs in the
deployer's per-build cgroup; otherwise ``RLIMIT_DATA`` (never ``RLIMIT_AS``, which
counts the address space V8 only reserves). RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_CORE
and RLIMIT_NPROC apply at every level.

SIGTERM to the launcher stops the whole tree and reaps it before the launcher
exits (status 143). The build's own status is the launcher's exit status
(128 + signal if it was killed).
"""

# ruff: noqa: S108 - /tmp and /dev/shm here are fresh tmpfs mounts in the build's own
# mount namespace, never the host's shared temporary directories.
# Start-up is most of the launcher's CPU time, so it imports little: the signal
# module's enums would import enum, functools and collections (~5 ms per build);
# its C core has the same functions and plain int constants. No contextlib either.
import _signal as signal
import ctypes
import marshal
import os
import resource
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 1
STAGE = "/tmp/.buildq-stage"  # in the launcher's own mount namespace only
ETC = (
    "alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "nsswitch.conf", "hosts",
    "resolv.conf", "host.conf", "gai.conf", "mime.types", "protocols", "services",
    "os-release", "debian_version", "shells",
)  # fmt: skip
SHARED_WRITABLE = ("/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The shell reads the build command from its environment, never from its argv.
COMMAND_VAR = "BUILDQ_COMMAND"
SHELL = ("/bin/sh", "-c", f'eval "${COMMAND_VAR}"')

libc = ctypes.CDLL(None, use_errno=True)


class Stop(Exception):
    """SIGTERM, SIGINT or SIGHUP arrived: stop the build."""


def _on_signal(signum, frame):
    raise Stop


def fail(message):
    sys.stderr.write(f"buildq sandbox: {message}\n")
    sys.stderr.flush()
    os._exit(126)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        fail(f"{what}: {os.strerror(err)}")


def prctl(option, value):
    check(libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def mount(source, target, fstype, flags, data=None):
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def join_groups(spec):
    """Enter the build's cgroup in every hierarchy: all our descendants inherit it."""
    pid = str(os.getpid())
    for procs in spec["cgroup_procs"]:
        try:
            with open(procs, "w") as fh:
                fh.write(pid)
        except OSError as exc:
            fail(f"cannot join build cgroup {procs}: {exc.strerror}")


def limit(spec):
    resource.setrlimit(resource.RLIMIT_CPU, (spec["cpu_s"], spec["cpu_s"]))
    if spec["data_bytes"]:  # no cgroup: cap each process's data, never its address space
        resource.setrlimit(resource.RLIMIT_DATA, (spec["data_bytes"], spec["data_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize_bytes"], spec["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec["nproc"]:
        nproc = spec["nproc"]
        if spec["uid"] is None:  # the deployer's own uid: its processes count too
            nproc += count_own_processes()
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def count_own_processes():
    """RLIMIT_NPROC counts every process of the uid: leave room for the existing ones."""
    count, uid = 0, os.getuid()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:  # noqa: SIM105 - no contextlib (see the imports)
                count += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return count


def drop(uid):
    """Become ``uid`` (same gid, no groups) for good."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() != uid or os.getegid() != uid:
        fail("could not drop privileges")


def shell_env(launch):
    """The build shell's whole environment: the build's, plus its command."""
    return {**launch["env"], COMMAND_VAR: launch["command"]}


def exec_shell(spec, launch):
    limit(spec)
    os.chdir(spec["cwd"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.execve(SHELL[0], list(SHELL), shell_env(launch))  # noqa: S606 - the build


def status_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def descendants():
    """Pids whose parent chain leads to this process (read from /proc)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    data = fh.read()
                parents[int(name)] = int(data[data.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError):
                pass
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def kill_all():
    """SIGKILL every descendant and reap until none is left (we are a subreaper).

    A descendant whose parent died is re-parented to us, so no child left means no
    descendant left: the scan of /proc (milliseconds with many processes on the
    host) runs only while a child is still there.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue  # reaped one that had already ended; look again
        for pid in descendants():
            try:  # noqa: SIM105 - no contextlib (see the imports)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def supervise(main_pid):
    """Reap children until ``main_pid`` ends; then end the rest; exit with its status."""
    code = 143
    try:
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == main_pid:
                code = status_code(status)
                break
    except Stop:
        pass
    except ChildProcessError:
        code = 126
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    kill_all()
    os._exit(code)


def open_dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def make_dirs(path, mode=0o755):
    parts = [p for p in path.split("/") if p]
    current = ""
    for part in parts:
        current += "/" + part
        if not os.path.isdir(current):
            os.mkdir(current, mode)


def expose_at(fd, target):
    """Bind the directory open as ``fd`` read-only at ``target``, reachable by anyone.

    The first ancestor of ``target`` others cannot traverse (such as /root) is
    covered with an empty tmpfs first, which also hides the rest of it.
    """
    current = ""
    for part in [p for p in os.path.dirname(target).split("/") if p]:
        current += "/" + part
        if not os.path.isdir(current):
            break
        if not os.stat(current).st_mode & 0o001:
            mount("tmpfs", current, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
            break
    make_dirs(target)
    mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def private_root(spec, extra_flags):
    """(root) Own namespaces; a private /tmp holding the job directory at MOUNT."""
    check(libc.unshare(CLONE_NEWNS | extra_flags), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Opened in the new namespace (a bind source must be in the caller's own), and
    # before /tmp is covered.
    work = open_dir(spec["workdir"])
    exposed = [(open_dir(p), p) for p in spec["expose"]]
    size = f"size={spec['tmpfs_bytes']}"
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
    for shared_dir in SHARED_WRITABLE:  # nothing a build leaves there reaches the next one
        if os.path.isdir(shared_dir) and not os.path.islink(shared_dir):
            mount("tmpfs", shared_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
    os.mkdir(spec["mount"], 0o700)
    mount(f"/proc/self/fd/{work}", spec["mount"], None, MS_BIND | MS_REC)
    os.close(work)
    return exposed


def loopback_up():
    import fcntl  # only the uid level needs these
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH", ifreq[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def run_uid(spec, launch):
    flags = CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    if not spec["network"]:
        flags |= CLONE_NEWNET
    exposed = private_root(spec, flags)
    for fd, path in exposed:
        expose_at(fd, path)
        os.close(fd)
    if not spec["network"]:
        loopback_up()
    pid = os.fork()
    if pid:
        supervise(pid)
    # pid 1 of the build's pid namespace.
    try:
        check(libc.unshare(CLONE_NEWNS), "unshare mount")
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        check(libc.sethostname(b"buildq", 6), "sethostname")
        drop(spec["uid"])
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the launcher is our parent (ppid 0 here)
        build = os.fork()
        if build == 0:
            exec_shell(spec, launch)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == build:
                os._exit(status_code(status))  # the kernel kills the rest
    except Stop:
        os._exit(143)
    except BaseException as exc:
        fail(f"init: {exc}")


def bwrap_argv(spec, launch, staged, data_fd):
    args = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
    if spec["disable_userns"]:
        args.append("--disable-userns")
    if spec["network"]:
        args.append("--share-net")
    args += ["--hostname", "buildq", "--clearenv"]
    for key, value in shell_env(launch).items():  # via --args: never on a command line
        args += ["--setenv", key, value]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--ro-bind-data", str(data_fd), "/etc/passwd"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(spec["tmpfs_bytes"]), "--tmpfs", "/tmp"]
    args += ["--bind", staged["work"], spec["mount"]]
    for source, target in staged["expose"]:
        args += ["--ro-bind", source, target]
    return [*args, "--chdir", spec["cwd"]]


def run_bwrap(spec, launch):
    staged = {"work": spec["workdir"], "expose": [(p, p) for p in spec["expose"]]}
    if spec["uid"] is not None:
        # Root: stage the job directory and the interpreter where the unprivileged
        # uid can reach them, in a mount namespace of the launcher's own.
        check(libc.unshare(CLONE_NEWNS), "unshare")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        work = open_dir(spec["workdir"])
        exposed = [(open_dir(p), p) for p in spec["expose"]]
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        make_dirs(STAGE + "/work")
        mount(f"/proc/self/fd/{work}", STAGE + "/work", None, MS_BIND | MS_REC)
        staged = {"work": STAGE + "/work", "expose": []}
        for index, (fd, path) in enumerate(exposed):
            make_dirs(f"{STAGE}/x{index}")
            mount(f"/proc/self/fd/{fd}", f"{STAGE}/x{index}", None, MS_BIND | MS_REC)
            staged["expose"].append((f"{STAGE}/x{index}", path))
        drop(spec["uid"])
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change
    uid = os.getuid()
    passwd = f"build:x:{uid}:{uid}:buildq build:{spec['mount']}/home:/bin/sh\n"
    data_r, data_w = os.pipe()
    args_r, args_w = os.pipe()
    os.write(data_w, passwd.encode())
    os.close(data_w)
    argv = bwrap_argv(spec, launch, staged, data_r)
    os.write(args_w, b"\0".join(a.encode() for a in argv) + b"\0")
    os.close(args_w)
    os.set_inheritable(data_r, True)
    os.set_inheritable(args_r, True)
    pid = os.fork()
    if pid == 0:
        limit(spec)  # inherited by bwrap and everything in the sandbox
        # bubblewrap runs with the launcher's fixed environment, never the build's.
        os.execv(spec["bwrap"], [spec["bwrap"], "--args", str(args_r), "--", *SHELL])  # noqa: S606
    os.close(data_r)
    os.close(args_r)
    supervise(pid)


def run_process(spec, launch):
    pid = os.fork()
    if pid == 0:
        exec_shell(spec, launch)
    supervise(pid)


def read_launch(fd):
    """The launch spec from the pipe ``fd``, read to its end; the pipe is closed."""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        os.close(fd)
        # Written by the deployer on a pipe only it and we hold (``launch_pipe``).
        launch = marshal.loads(b"".join(chunks))  # noqa: S302
    except (OSError, ValueError, EOFError, TypeError) as exc:
        fail(f"cannot read the launch spec: {exc}")
    if not isinstance(launch, dict) or not isinstance(launch.get("env"), dict):
        fail("launch spec without env")
    if not isinstance(launch.get("command"), str):
        fail("launch spec without env or command")
    return launch


def main():
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        fail("usage: _launch.py FD (a pipe holding the launch spec)")
    launch = read_launch(int(sys.argv[1]))
    spec = launch["spec"]
    join_groups(spec)  # first: before any fork, unshare or uid change
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        {"process": run_process, "uid": run_uid, "bwrap": run_bwrap}[spec["level"]](spec, launch)
    except Stop:
        os._exit(143)
    except OSError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
