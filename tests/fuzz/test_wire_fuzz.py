"""Whatever bytes a client sends after the handshake, the broker answers with a close
frame or carries on: never an internal error, never a traceback, never down.

Seeded, so a failure names the seed that reproduces it.
"""

from __future__ import annotations

import logging
import random
import struct
import sys
from pathlib import Path

import pytest

from postoffice.amqp import (
    BasicAck,
    BasicConsume,
    BasicProperties,
    BasicPublish,
    QueueDeclare,
    encode_method_frame,
)
from postoffice.amqp.frames import encode_frame
from postoffice.testing import running_broker

sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))
from rawamqp import RawClient  # the bare-socket client of the integration tests

_HEADERS = {"a": [1, {"b": 2.5}], "s": "text"}
VALID = [
    encode_method_frame(1, QueueDeclare(queue="fuzz")),
    encode_method_frame(1, BasicPublish(exchange="", routing_key="fuzz"))
    + encode_frame(
        2, 1, struct.pack(">HHQ", 60, 0, 3) + BasicProperties.from_fields(headers=_HEADERS).raw
    )
    + encode_frame(3, 1, b"abc"),
    encode_method_frame(1, BasicConsume(queue="fuzz")),
    encode_method_frame(1, BasicAck(delivery_tag=1)),
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op < 0.6 and out:
            del out[rng.randrange(len(out)) :]
        elif op < 0.8:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            out += rng.randbytes(rng.randint(1, 30))
    return bytes(out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mutated_frames_never_cause_an_internal_error(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(seed)
    with running_broker() as broker:
        for _ in range(40):
            client = RawClient(broker.host, broker.port, timeout=2)
            try:
                client.handshake()
                client.open_channel(1)
                for _ in range(rng.randint(1, 5)):
                    piece = rng.choice(VALID)
                    client.send(mutate(rng, piece) if rng.random() < 0.7 else piece)
                client.read_raw_until_closed(0.2)
            except Exception:  # the broker may close on us at any point, as it should
                pass
            finally:
                client.close()
        with RawClient(broker.host, broker.port, timeout=5) as survivor:
            survivor.handshake()
            survivor.open_channel(1)
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not problems, f"seed {seed}: {problems[0].getMessage()}"
