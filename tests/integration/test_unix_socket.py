"""The Unix-socket listener speaks the same AMQP as TCP, and trusts its peers as local."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from postoffice.amqp import ConnectionStart, decode_method
from postoffice.testing import running_broker


def test_a_client_on_the_unix_socket_gets_connection_start(tmp_path: Path) -> None:
    path = str(tmp_path / "amqp.sock")
    with running_broker(unix_socket=path) as broker:
        assert broker.port  # TCP listens too
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b"AMQP\x00\x00\x09\x01")
            data = b""
            while len(data) < 7 or len(data) < 8 + struct.unpack(">I", data[3:7])[0]:
                chunk = client.recv(65536)
                assert chunk, "the broker closed the socket"
                data += chunk
        frame_type, channel, size = struct.unpack(">BHI", data[:7])
        assert (frame_type, channel) == (1, 0)
        start = decode_method(data[7 : 7 + size])
        assert isinstance(start, ConnectionStart)
        assert b"PLAIN" in start.mechanisms
    assert not Path(path).exists()  # removed on shutdown
