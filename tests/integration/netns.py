"""Deployer "hosts" in Linux network namespaces, for multi-host tests on one machine.

Each host is a namespace joined to this one by a veth pair on a private /30 of its own
(10.<run>.<n>.1 here, .2 inside); nothing is routed beyond the pair, so a host reaches
only what listens on its .1 address in this namespace (tests put TCP proxies there).
Cutting a host's link takes the pair down: packets are dropped, open connections hang
as they do when a network partitions, and come back when it is restored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace: its name, and both ends of its link."""

    netns: str
    outer: str  # the veth end in this namespace
    inner: str
    outer_ip: str  # what the host reaches (bind proxies here)
    inner_ip: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` to run inside the host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        _ip("link", "set", self.outer, "up")


def why_not() -> str | None:
    """Why namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"bqprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"ip netns add failed: {getattr(exc, 'stderr', b'')!r}"
    _ip("netns", "del", probe)
    return None


def make_hosts(count: int) -> list[Host]:
    """``count`` hosts, linked and up; :func:`remove_hosts` undoes it."""
    run = os.getpid() % 50
    hosts = []
    try:
        for n in range(1, count + 1):
            tag = f"bq{os.getpid() % 100000}h{n}"
            host = Host(tag, f"{tag}o", f"{tag}i", f"10.{200 + run}.{n}.1", f"10.{200 + run}.{n}.2")
            _ip("netns", "add", host.netns)
            hosts.append(host)
            _ip("link", "add", host.outer, "type", "veth", "peer", "name", host.inner)
            _ip("link", "set", host.inner, "netns", host.netns)
            _ip("addr", "add", f"{host.outer_ip}/30", "dev", host.outer)
            _ip("link", "set", host.outer, "up")
            _ip("addr", "add", f"{host.inner_ip}/30", "dev", host.inner, netns=host.netns)
            _ip("link", "set", host.inner, "up", netns=host.netns)
            _ip("link", "set", "lo", "up", netns=host.netns)
    except BaseException:
        remove_hosts(hosts)
        raise
    return hosts


def remove_hosts(hosts: list[Host]) -> None:
    """Delete the namespaces and links (a veth pair goes with either end)."""
    for host in hosts:
        subprocess.run(["ip", "link", "del", host.outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
