"""Hosts made of Linux namespaces on one machine, for the on-premises cluster test.

Each host is its own
- network namespace (`ip netns`), joined to a private bridge by a veth pair, with its own
  IP and no default route: traffic between hosts stays on the bridge, and the bridge's
  own address (.1) is this machine as seen from the hosts (where `ray up` runs);
- PID namespace (`unshare --pid --fork --mount-proc`), whose init is the host's sshd:
  every command `ray up` runs over SSH lands inside the host, `ray stop` sees only that
  host's processes, and killing the init powers the host off (the kernel kills the rest);
- mount namespace, where `/tmp/ray` (Ray's sessions), `/tmp/qfleet` (qfleet's per-node
  component directories), root's home (via its own `/etc/passwd`), `/etc/hosts` and
  `/run` are the host's own, so session directories, synced files, Ray's bootstrap key
  and auth token never collide; everything else (Python, this checkout, the run
  directory of a job) is the machine's shared filesystem;
- UTS namespace with its own hostname.

Nothing is mounted, routed or started outside these namespaces except the bridge and the
host ends of the veth pairs. Everything is named with PREFIX so `remove_leftovers` can
find and remove it after a crash.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.cluster import ClusterTestError

PREFIX = "qfnc"                       # every netns, link and directory made here starts with it
WORKDIR = Path("/tmp") / PREFIX       # short on purpose: Ray's unix socket paths must stay short
BRIDGE = f"{PREFIX}-br"
REQUIRED_TOOLS = ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "rsync")
PRIVATE_TMP = ("ray", "qfleet")       # /tmp/<name> is each host's own (bind mounts)
MOUNTPOINTS_MADE = "mountpoints-made"  # in the work directory: /tmp/<name> made here, removed at the end


def missing_requirements() -> list[str]:
    """What this machine lacks to build the hosts (empty when it has everything)."""
    missing = []
    if not os.uname().sysname == "Linux":
        missing.append("Linux")
    elif os.geteuid() != 0:
        missing.append("root")
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            missing.append(tool + (" (openssh-server)" if tool == "sshd" else ""))
    return missing


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise ClusterTestError(f"`{' '.join(argv)}` failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out


@dataclass
class Host:
    name: str                 # hostname, netns and veth name: qfnc-head, qfnc-w1, ...
    ip: str
    files: Path               # its private files: home, /tmp/ray, passwd, hosts, sshd config and log
    proc: Optional[subprocess.Popen] = None   # `unshare`, parent of the PID namespace's init

    @property
    def ray_dir(self) -> Path:
        """What the host sees as /tmp/ray (session directories and logs)."""
        return self.files / "ray"

    def session_logs(self) -> Path:
        """The log folder of the host's latest Ray session, as seen from this machine
        (`session_latest` is a link to an absolute /tmp/ray/... path inside the host)."""
        latest = self.ray_dir / "session_latest"
        target = os.readlink(latest) if latest.is_symlink() else "session_latest"
        return self.ray_dir / Path(target).name / "logs"

    def init_pid(self) -> Optional[int]:
        """The PID (in this machine's namespace) of the host's init, or None if it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def memory_mb(self) -> float:
        """Proportional set size of every process on the host (shared pages split between
        the processes sharing them), in MB."""
        total_kb = 0
        for pid in run("ip", "netns", "pids", self.name, check=False).stdout.split():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:   # exited meanwhile
                continue
            total_kb += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        return round(total_kb / 1024, 1)

    def power_off(self) -> None:
        """Kill the host's whole process tree at once: SIGKILL to its PID namespace's init."""
        pid = self.init_pid()
        if pid is None:
            raise ClusterTestError(f"host {self.name} ({self.ip}) is not running")
        os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


class Hosts:
    """The head and workers of one cluster test: `create()`, then `destroy()` (always)."""

    def __init__(self, *, subnet: str = "10.213.0", workers: int = 2):
        self.workdir = WORKDIR                  # fixed, so that `remove_leftovers` finds it
        self.subnet = subnet
        names = ["head"] + [f"w{i + 1}" for i in range(workers)]
        self.all = [Host(f"{PREFIX}-{n}", f"{subnet}.{10 + i}", WORKDIR / "hosts" / n) for i, n in enumerate(names)]
        self.head, self.workers = self.all[0], self.all[1:]
        self.home = WORKDIR / "home"            # root's home on every host (each mounts its own here)
        self.client_key = WORKDIR / "ssh" / "cluster_key"

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    # -- building ------------------------------------------------------------------------------
    def create(self, timeout: float = 30) -> None:
        self.workdir.mkdir(mode=0o700)
        self._mountpoints()
        self._keys()
        self.home.mkdir()
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        for host in self.all:
            self._network(host)
            self._files(host)
            self._start(host)
        for host in self.all:
            wait_for_sshd(host, timeout)

    def _mountpoints(self) -> None:
        made = []
        for name in PRIVATE_TMP:
            path = Path("/tmp") / name
            if not path.exists():
                path.mkdir()
                made.append(str(path))
        (self.workdir / MOUNTPOINTS_MADE).write_text("".join(m + "\n" for m in made))

    def _keys(self) -> None:
        ssh = self.workdir / "ssh"
        ssh.mkdir(mode=0o700)
        for key in ("cluster_key", "host_key"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{PREFIX}-{key}", "-f", str(ssh / key))
        shutil.copy(ssh / "cluster_key.pub", ssh / "authorized_keys")

    def _network(self, host: Host) -> None:
        run("ip", "netns", "add", host.name)
        run("ip", "link", "add", host.name, "type", "veth", "peer", "name", "eth0", "netns", host.name)
        run("ip", "link", "set", host.name, "master", BRIDGE, "up")
        run("ip", "-n", host.name, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        run("ip", "-n", host.name, "link", "set", "eth0", "up")
        run("ip", "-n", host.name, "link", "set", "lo", "up")   # no default route: nothing leaves the bridge

    def _files(self, host: Host) -> None:
        for sub in ("home", *PRIVATE_TMP):
            (host.files / sub).mkdir(parents=True)
        passwd = Path("/etc/passwd").read_text().splitlines()
        (host.files / "passwd").write_text("".join(
            (_with_home(line, self.home) if line.startswith("root:") else line) + "\n" for line in passwd))
        names = "".join(f"{h.ip}\t{h.name}\n" for h in self.all)
        (host.files / "hosts").write_text(f"127.0.0.1\tlocalhost\n{self.bridge_ip}\t{PREFIX}-client\n{names}")
        ssh = self.workdir / "ssh"
        (host.files / "sshd_config").write_text(
            f"ListenAddress {host.ip}\nHostKey {ssh / 'host_key'}\nAuthorizedKeysFile {ssh / 'authorized_keys'}\n"
            "PidFile none\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\nMaxSessions 64\n"
            "MaxStartups 64\nSubsystem sftp internal-sftp\n")
        # PID 1 of the host: its own mounts, hostname, then sshd in the foreground.
        (host.files / "init.sh").write_text("\n".join([
            "set -e",
            f"mount --bind {host.files / 'passwd'} /etc/passwd",
            f"mount --bind {host.files / 'hosts'} /etc/hosts",
            f"mount --bind {host.files / 'home'} {self.home}",
            *(f"mount --bind {host.files / name} /tmp/{name}" for name in PRIVATE_TMP),
            "mount -t tmpfs -o mode=755 tmpfs /run",
            "mkdir /run/sshd",
            f"hostname {host.name}",
            f"exec $(command -v sshd || echo /usr/sbin/sshd) -D -e -f {host.files / 'sshd_config'}",
            ""]))

    def _start(self, host: Host) -> None:
        log = open(host.files / "sshd.log", "wb")
        host.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.name, "unshare", "--pid", "--fork", "--mount-proc", "--uts",
             "--propagation", "private", "sh", str(host.files / "init.sh")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    # -- tearing down ---------------------------------------------------------------------------
    def destroy(self) -> None:
        for host in self.all:
            if host.proc is not None and host.proc.poll() is None:
                pid = host.init_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                try:
                    host.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    host.proc.kill()
        remove_leftovers()


def _with_home(passwd_line: str, home: Path) -> str:
    fields = passwd_line.split(":")
    fields[5] = str(home)
    return ":".join(fields)


def wait_for_sshd(host: Host, timeout: float) -> None:
    """Until the host's sshd greets on port 22 (from this machine, over the bridge)."""
    deadline = time.monotonic() + timeout
    while True:
        if host.proc is not None and host.proc.poll() is not None:
            log = (host.files / "sshd.log").read_text(errors="replace")[-1500:]
            raise ClusterTestError(f"host {host.name} ({host.ip}) exited ({host.proc.returncode}) while starting "
                                   f"sshd:\n{log}")
        try:
            with socket.create_connection((host.ip, 22), timeout=1) as s:
                if s.recv(16).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ClusterTestError(f"sshd on host {host.name} ({host.ip}) did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def leftovers() -> list[str]:
    """Names of namespaces, links and directories from an earlier run that are still there."""
    found = [f"netns {n}" for n in _netns_names()]
    found += [f"link {n}" for n in _link_names()]
    if WORKDIR.exists():
        found.append(f"directory {WORKDIR}")
    return found


def remove_leftovers() -> list[str]:
    """Kill every process inside this harness's namespaces, delete the namespaces, the
    bridge, the veths and the work directory. Touches nothing without PREFIX in its name."""
    removed = leftovers()
    for name in _netns_names():
        for _ in range(20):
            pids = [int(p) for p in run("ip", "netns", "pids", name, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        run("ip", "netns", "del", name, check=False)
    for name in _link_names():
        run("ip", "link", "del", name, check=False)
    made = WORKDIR / MOUNTPOINTS_MADE
    for path in (made.read_text().split() if made.exists() else []):
        try:
            Path(path).rmdir()   # only if still empty: something else may have used it meanwhile
        except OSError:
            pass
    shutil.rmtree(WORKDIR, ignore_errors=True)
    return removed


def _netns_names() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX + "-")]


def _link_names() -> list[str]:
    out = run("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(PREFIX + "-")]
