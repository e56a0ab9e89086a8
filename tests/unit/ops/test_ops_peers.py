"""Control-socket peer credentials and socket mode."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from xinfd.api.peers import ControlAccess, PeerCreds, read_peer_creds, secure_socket


def test_read_peer_creds_of_a_real_unix_socket_pair() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = read_peer_creds(left)
    assert peer is not None
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert os.getgid() in peer.groups or not peer.groups
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert read_peer_creds(tcp) is None  # not a Unix socket: no credentials
    assert read_peer_creds(None) is None


def settings(**kw: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "control_allowed_users": (),
        "control_allowed_groups": (),
        "control_socket_group": None,
    }
    return SimpleNamespace(**{**base, **kw})


def test_access_rules() -> None:
    access = ControlAccess.from_settings(
        settings(control_allowed_users=("4242",), control_allowed_groups=("777",), control_socket_group="0"),
        own_uid=1000,
    )
    assert access.allows(PeerCreds(pid=1, uid=1000, gid=5))  # the daemon's own user
    assert access.allows(PeerCreds(pid=1, uid=0, gid=0))  # root
    assert access.allows(PeerCreds(pid=1, uid=4242, gid=5))  # listed user
    assert access.allows(PeerCreds(pid=1, uid=5000, gid=777))  # listed group, primary
    assert access.allows(
        PeerCreds(pid=1, uid=5000, gid=5, groups=frozenset({5, 0}))
    )  # socket group, supplementary
    assert not access.allows(PeerCreds(pid=1, uid=5000, gid=5, groups=frozenset({5, 6})))
    strict = ControlAccess.from_settings(settings(), own_uid=1000)
    assert not strict.allows(PeerCreds(pid=1, uid=5000, gid=777))


def test_secure_socket_modes(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        secure_socket(path, group=None)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secure_socket(path, group=str(os.getgid()))
        assert stat.S_IMODE(path.stat().st_mode) == 0o660 and path.stat().st_gid == os.getgid()
        with pytest.raises(KeyError):
            secure_socket(path, group="no-such-group-xinfd")
