"""Peer servers (placeholder docstring)."""

from harness.peers.common import OnnxModel, PeerServer, PeerUnavailable

__all__ = ["OnnxModel", "PeerServer", "PeerUnavailable"]
