"""The Redis Cluster harness itself (tests/redis_cluster.py): it builds a healthy cluster, keys
land where the slot map says, and a killed master fails over and rejoins as a replica."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
from redis.exceptions import MovedError

from tests.conftest import say
from tests.redis_cluster import SLOTS, ClusterNode, RedisCluster, running_cluster

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[RedisCluster]:
    """One cluster (3 masters, 1 replica each) for the module. The failover test runs last
    and leaves the cluster healthy again, with the roles of one pair swapped."""
    with running_cluster() as started:
        say(request, f"redis cluster: started in {started.started_in:.2f}s")
        yield started


def test_every_slot_has_one_owner_and_every_master_a_replica(cluster: RedisCluster) -> None:
    primaries = cluster.primaries()
    assert len(primaries) == 3
    assert len(cluster.nodes) == len(cluster.urls) == 6
    assert cluster.url in cluster.urls
    owned = [cluster.slots_of(primary) for primary in primaries]
    assert sum(len(slots) for slots in owned) == SLOTS
    assert frozenset().union(*owned) == frozenset(range(SLOTS))
    replicas = [node for primary in primaries for node in cluster.replicas_of(primary)]
    assert sorted(node.port for node in primaries + replicas) == sorted(
        node.port for node in cluster.nodes
    )
    for primary in primaries:
        (replica,) = cluster.replicas_of(primary)
        info = replica.replication()
        assert info["role"] == "slave"
        assert info["master_port"] == primary.port
        assert info["master_link_status"] == "up"
        assert primary.cluster_info()["cluster_state"] == "ok"
    assert cluster.problems() == []


def test_keys_land_on_the_owner_of_their_slot(cluster: RedisCluster) -> None:
    tagged = [f"{{a:b}}:{suffix}" for suffix in ("x", "y", "events", "etag:1")]
    assert len({cluster.keyslot(key) for key in tagged}) == 1
    assert len({cluster.node_for_key(key).port for key in tagged}) == 1

    # One key per master, found through the slot map; the cluster client routes each one.
    by_owner: dict[int, str] = {}
    for index in range(200):
        by_owner.setdefault(cluster.node_for_key(f"key:{index}").port, f"key:{index}")
    assert len(by_owner) == 3
    client = cluster.cluster_client(decode_responses=True)
    try:
        for key in [*by_owner.values(), *tagged]:
            assert client.set(key, f"value of {key}")
            assert client.get(key) == f"value of {key}"
    finally:
        client.close()

    # Each key is on its owner, and any other master redirects a plain client there.
    for port, key in by_owner.items():
        owner = cluster.node(port)
        assert owner.client().get(key) == f"value of {key}"
        other = next(node for node in cluster.primaries() if node is not owner)
        with pytest.raises(MovedError, match=f"^{cluster.keyslot(key)} {owner.address}$"):
            other.client().get(key)


def test_a_killed_master_fails_over_and_rejoins_as_a_replica(
    cluster: RedisCluster, request: pytest.FixtureRequest
) -> None:
    key = "{a:b}:failover"
    old = cluster.node_for_key(key)
    (replica,) = cluster.replicas_of(old)
    old.client().set(key, "kept")
    assert old.execute("WAIT", 1, 5000) == 1  # the replica has it

    timing = cluster.failover_primary_of(key)

    assert timing.killed is old
    assert timing.promoted is replica
    assert not old.alive
    assert cluster.node_for_key(key) is replica
    assert replica.replication()["role"] == "master"
    assert replica.client().get(key) == "kept"
    client = cluster.cluster_client(decode_responses=True)  # from the live nodes
    try:
        assert client.get(key) == "kept"
    finally:
        client.close()

    assert cluster.restart(old) is replica
    assert cluster.replicas_of(replica) == [old]
    assert old.replication()["role"] == "slave"
    assert old.execute("READONLY")
    assert old.client().get(key) == "kept"
    assert cluster.problems() == []
    say(
        request,
        f"redis cluster failover: replica promoted {timing.promoted_after:.2f}s after SIGKILL, "
        f"cluster_state:ok everywhere after {timing.ok_after:.2f}s",
    )


def test_a_start_that_fails_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[tuple[ClusterNode, subprocess.Popen[bytes]]] = []

    def fail(self: RedisCluster, timeout: float) -> None:
        launched.extend((node, node.process) for node in self.nodes if node.process)
        raise RuntimeError("create failed")

    monkeypatch.setattr(RedisCluster, "_create", fail)
    cluster = RedisCluster()
    with pytest.raises(RuntimeError, match="create failed"):
        cluster.start()
    assert len(launched) == 6  # every server was up when `create` failed
    assert cluster.nodes == []
    for node, process in launched:
        assert process.poll() is not None
        assert not node.dir.exists()
        with pytest.raises(ConnectionRefusedError):  # nothing listens on its port any more
            socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
