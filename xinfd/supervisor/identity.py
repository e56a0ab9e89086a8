"""One replica identity: its label and the paths of its socket, log and pid file, derived in one place.

A replica is ``<model_uid>-r<index>`` everywhere: the log line tag, ``X-Xinfd-Replica``, ``xinfctl gpus``, and
the names of its files under the daemon home. The label rule itself is ``xinfd.types.replica_label``, shared
with the replica process (``ReplicaContext.label``), which must not import this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xinfd.orphans import pid_dir
from xinfd.supervisor.runtime_dir import RuntimeDir
from xinfd.types import replica_label


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaIdentity:
    """Who a replica is and where its files live."""

    model_uid: str
    index: int
    label: str
    socket_path: Path
    log_path: Path
    pid_file: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeLayout:
    """The directories of one daemon home that replicas use."""

    home: Path
    run_dir: Path  # replica sockets
    log_dir: Path  # replica logs (and the daemon's)
    pid_dir: Path  # one pid file per replica group, for orphan cleanup after a daemon crash
    cache_dir: Path  # weights engines derive (e.g. GGUF converted), kept across restarts

    @classmethod
    def for_home(cls, home: Path, run_dir: Path | None = None) -> RuntimeLayout:
        """The layout of ``home``; ``run_dir`` is the daemon's prepared ``RuntimeDir`` (None: prepare one)."""
        return cls(
            home=home,
            run_dir=run_dir if run_dir is not None else RuntimeDir.prepare(home).path,
            log_dir=home / "logs",
            pid_dir=pid_dir(home),
            cache_dir=home / "cache" / "converted",
        )

    def replica(self, model_uid: str, index: int) -> ReplicaIdentity:
        label = replica_label(model_uid, index)
        return ReplicaIdentity(
            model_uid=model_uid,
            index=index,
            label=label,
            socket_path=self.run_dir / f"{label}.sock",
            log_path=self.log_dir / f"{label}.log",
            pid_file=self.pid_dir / f"{label}.pid",
        )
