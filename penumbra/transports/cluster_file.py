"""Where ``penumbra start`` records the clusters it started on this machine.

``~/.penumbra/clusters.json`` (or ``$PENUMBRA_HOME/clusters.json``) maps a
head address to what a driver or node needs to join it: the token, the Unix
socket of the head daemon, its pid and session.  The file is private to the
user (mode 0600): the token is a password.
"""

from __future__ import annotations

import json
import os

from .session import pid_alive

__all__ = ["home", "read_cluster", "write_cluster", "remove_cluster", "find_cluster", "all_clusters"]


def home() -> str:
    return os.environ.get("PENUMBRA_HOME") or os.path.join(os.path.expanduser("~"), ".penumbra")


def _path() -> str:
    return os.path.join(home(), "clusters.json")


def all_clusters() -> dict[str, dict]:
    try:
        with open(_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(data: dict) -> None:
    os.makedirs(home(), mode=0o700, exist_ok=True)
    tmp = _path() + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, _path())


def write_cluster(address: str, info: dict) -> None:
    data = all_clusters()
    data[address] = dict(info, address=address, latest=True)
    for k, v in data.items():
        if k != address:
            v["latest"] = False
    _save(data)


def remove_cluster(address: str) -> None:
    data = all_clusters()
    if data.pop(address, None) is not None:
        _save(data)


def read_cluster(address: str) -> dict | None:
    data = all_clusters()
    if address in data:
        return data[address]
    host, _, port = address.rpartition(":")
    for k, v in data.items():
        if k.rpartition(":")[2] == port and host in ("localhost", "127.0.0.1", "0.0.0.0", ""):
            return v
    return None


def find_cluster() -> str:
    """The address of the cluster for ``init(address="auto")``."""
    env = os.environ.get("PENUMBRA_ADDRESS")
    if env:
        return env
    live = {k: v for k, v in all_clusters().items() if pid_alive(int(v.get("pid", 0) or 0))}
    if not live:
        raise ConnectionError(
            "no running penumbra cluster found on this machine: start one with 'penumbra start --head', "
            "or set $PENUMBRA_ADDRESS, or call init() without an address for an embedded cluster"
        )
    latest = [k for k, v in live.items() if v.get("latest")]
    return latest[0] if latest else sorted(live)[-1]
