"""What a node daemon is told when it starts: ``DaemonConfig``.

``launch`` writes the fields as JSON down a pipe (token included: never on
the command line, where ``ps`` shows it) and the daemon reads them back into
a ``DaemonConfig`` (``daemon._read_config``), whose ``__post_init__`` checks
them: a contradictory option stops the daemon at start with a message that
says which option and how to fix it.  Kept apart from the ``Daemon`` so that
its parts (daemon_*.py) can name it and ``_JOIN_TIMEOUT`` without importing
the class assembled from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"  # ``recover_from=["auto"]``: recover if replica hosts reconnect, else start fresh


@dataclass
class DaemonConfig:
    session: str
    token: str
    session_dir: str
    head: bool = True
    head_address: str = ""  # host:port of the head daemon (node role)
    host: str = "127.0.0.1"
    port: int = 0  # TCP port (0: any free port)
    num_cpus: float = 1
    num_gpus: float = 0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 512 << 20
    memory: float | None = None  # the ``memory`` resource in bytes; None: 70% of available RAM, as Ray
    gcs_shards: int = 1
    chain_length: int = 1
    parent_pid: int = 0  # embedded: exit when this process is gone
    validate: bool = False
    # Failure detection (see core/head.py, "The liveness rule"): a node is
    # declared dead after about ``node_timeout`` seconds without heartbeats
    # (a daemon that exits is noticed at once, by its closed connection).
    # In Ray's range: its GCS checks a raylet every 3 s and gives up after 5
    # failed checks of up to 10 s each (health_check_period_ms,
    # health_check_failure_threshold, health_check_timeout_ms), so a
    # process stopped for tens of seconds survives.  Tests pass short values.
    node_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    forward_queue_threshold: int = 100
    shm_root: str = "/dev/shm"
    node_id: str = ""
    # task and actor-call runs the node keeps for ``penumbra.timeline()``
    # (the last N; 0: none; see core/timeline.py)
    timeline_limit: int = 10_000
    # GCS replicas beyond the head's process (see "GCS replicas on nodes"
    # in the module docstring): a node daemon with ``gcs_replica`` hosts one
    # replica of each shard; a head daemon with ``recover_from`` (host:port
    # of surviving daemons that host replicas) is a new head rebuilding the
    # cluster's control state from them, waiting up to ``recover_wait``
    # seconds for those daemons to reconnect to it.
    gcs_replica: bool = False
    replicas_on_nodes: int = 0  # head role: ask this many node daemons to host replicas
    recover_from: list[str] = field(default_factory=list)
    recover_wait: float = 20.0
    # how long a node daemon that lost its head retries the head's address
    # before it stops (None: 20 s, unlimited for a node hosting GCS
    # replicas: it holds the cluster's state until a head recovers it)
    head_wait: float | None = None
    # object spilling (Ray's): pinned objects go to files under this
    # directory when the store is full ("" = the session directory)
    object_spilling_directory: str = ""
    spilling: bool = True
    spill_threshold: float = 0.8
    # GCS flushing (head only): None/False off, True defaults, or a dict of
    # FlushConfig fields; segments go under <session_dir>/gcs-flush
    gcs_flush: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.timeline_limit, bool) or not isinstance(self.timeline_limit, int) or self.timeline_limit < 0:
            raise ValueError(f"timeline_limit must be an int >= 0 (the runs a node keeps for penumbra.timeline(); "
                             f"0 keeps none), got {self.timeline_limit!r}")
        if not (self.heartbeat_interval > 0 and self.node_timeout > self.heartbeat_interval):
            raise ValueError(
                f"node_timeout ({self.node_timeout!r} s) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval!r} s), which must be > 0: a node is declared dead after "
                f"node_timeout without heartbeats (e.g. heartbeat_interval=1, node_timeout=30)")
        if self.gcs_replica and self.head:
            raise ValueError("gcs_replica is for a node daemon (penumbra start --address HEAD --gcs-replica): "
                             "the head daemon hosts the first replica of each shard already")
        if self.replicas_on_nodes and not self.head:
            raise ValueError("replicas_on_nodes is for a head daemon (penumbra start --head --gcs-replicas-on-nodes K)")
        if not (isinstance(self.replicas_on_nodes, int) and self.replicas_on_nodes >= 0):
            raise ValueError(f"replicas_on_nodes must be a whole number >= 0, got {self.replicas_on_nodes!r}")
        if self.recover_from and not self.head:
            raise ValueError("recover_from is for a head daemon (penumbra start --head --recover HOST:PORT)")
        if AUTO in self.recover_from and len(self.recover_from) > 1:
            raise ValueError("recover_from: 'auto' (recover from whichever replica hosts reconnect, else start "
                             "fresh) goes alone, not with addresses")
        if self.head_wait is not None and not self.head_wait > 0:
            raise ValueError(f"head_wait must be a number of seconds > 0, got {self.head_wait!r}")

    @property
    def unix_path(self) -> str:
        return os.path.join(self.session_dir, "node.sock")


_JOIN_TIMEOUT = 20.0  # seconds a joining node tries to reach its head (less than launch's 30 s wait)
