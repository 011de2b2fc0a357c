"""A null broker: the least work an AMQP peer can do, to show the load generator's ceiling.

It speaks just enough AMQP 0-9-1 for the benchmark's own scenarios on the default
exchange: it counts publishes per routing key (a queue) without keeping them, confirms
them at once, and delivers to consumers as many messages as were published to their
queue, from pre-encoded batches, within their prefetch window.  Deliveries carry
the message ids the publisher used (its index, numbers from 0), so the consumers'
checks hold.  ``selftest`` runs the transient scenario against it: what it measures
is the generator's own rate, with a broker that costs almost nothing.

Each connection is served by a thread; this is a measuring device, not a broker.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from postoffice import amqp
from postoffice.amqp.frames import (
    BASIC_PUBLISH,
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    decode_publish,
    deliver_framing,
    encode_ack,
    encode_content,
    method_index,
)

from .wire import MESSAGE_ID

__all__ = ["serve"]

_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_MAX = 131072
_BUFFER_SIZE = 4 << 20
_RECV_MAX = 1 << 20


class _Queues:
    """Per queue: messages published, messages delivered, and what their bodies look like."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a publish or an ack came in
        self.published: dict[str, int] = {}
        self.taken: dict[str, int] = {}
        self.body: dict[str, tuple[int, int]] = {}  # queue -> (publisher index, body size)

    def add(self, queue: str, count: int) -> None:
        with self.lock:
            self.published[queue] = self.published.get(queue, 0) + count
            self.changed.notify_all()

    def ack(self, acked: dict[int, int], channel: int, tag: int) -> None:
        with self.lock:
            acked[channel] = max(acked.get(channel, 0), tag)
            self.changed.notify_all()

    def take(self, queue: str, most: Callable[[], int]) -> tuple[int, int]:
        """Up to ``most()`` messages of ``queue``: (how many, the first one's number).

        When there are none, waits (a little) for a publish or an ack first.
        """
        with self.changed:
            first = self.taken.get(queue, 0)
            count = min(most(), self.published.get(queue, 0) - first)
            if count <= 0:
                self.changed.wait(0.01)
                return 0, first
            self.taken[queue] = first + count
        return count, first

    def depth(self, queue: str) -> int:
        with self.lock:
            return self.published.get(queue, 0) - self.taken.get(queue, 0)


def serve(ready: Any, host: str = "127.0.0.1") -> None:
    """Listen on a free port, put the port on ``ready`` (a queue), serve until killed."""
    # Reading publishes and writing deliveries are threads of one process: let them take
    # turns often, or a consumer waits out a whole default switch interval (5 ms).
    sys.setswitchinterval(0.0002)
    listener = socket.create_server((host, 0))
    ready.put(listener.getsockname()[1])
    queues = _Queues()
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_Connection(sock, queues).run, daemon=True).start()


class _Connection:
    def __init__(self, sock: socket.socket, queues: _Queues) -> None:
        self.sock = sock
        self.queues = queues
        self.send_lock = threading.Lock()
        self.confirming: dict[int, int] = {}  # channel -> messages published on it
        self.prefetch: dict[int, int] = {}
        self.acked: dict[int, int] = {}
        self.deliverers: dict[int, _Deliverer] = {}
        self.closed = False
        self.out: list[bytes] = []

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def run(self) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sock.recv(8, socket.MSG_WAITALL) != PROTOCOL_HEADER:
                return
            start = amqp.ConnectionStart(server_properties={"product": "postoffice bench sink"})
            self.send(amqp.encode_method_frame(0, start))
            self._loop()
        except OSError:
            pass
        finally:
            self.closed = True
            for deliverer in self.deliverers.values():
                deliverer.stopped = True
            self.sock.close()

    def _loop(self) -> None:
        buffer = bytearray(_BUFFER_SIZE)
        view = memoryview(buffer)
        pos = end = 0
        publishes = _PublishCounter(self.queues)
        while not self.closed:
            if pos == end:
                pos = end = 0
            elif _BUFFER_SIZE - end < _RECV_MAX:
                buffer[: end - pos] = view[pos:end]
                pos, end = 0, end - pos
                publishes.forget_positions()
            got = self.sock.recv_into(view[end:], _RECV_MAX)
            if not got:
                return
            end += got
            pos = publishes.feed(buffer, pos, end, self._frame)
            for channel, count in publishes.counted.items():
                if channel in self.confirming:
                    self.confirming[channel] += count
                    self.out.append(encode_ack(channel, self.confirming[channel], True))
            publishes.counted.clear()
            if self.out:
                data, self.out = b"".join(self.out), []
                self.send(data)

    def _frame(self, channel: int, payload: bytes) -> None:
        method = amqp.decode_method(payload)
        reply = self._answer(channel, method)
        if reply is not None:
            self.out.append(amqp.encode_method_frame(channel, reply))

    def _answer(self, channel: int, method: amqp.Method) -> amqp.Method | None:
        if isinstance(method, amqp.ConnectionStartOk):
            return amqp.ConnectionTune(channel_max=2047, frame_max=_FRAME_MAX, heartbeat=0)
        if isinstance(method, amqp.ConnectionOpen):
            return amqp.ConnectionOpenOk()
        if isinstance(method, amqp.ConnectionClose | amqp.ConnectionCloseOk):
            self.closed = True
            return amqp.ConnectionCloseOk() if isinstance(method, amqp.ConnectionClose) else None
        if isinstance(method, amqp.ChannelOpen):
            return amqp.ChannelOpenOk()
        if isinstance(method, amqp.ChannelClose):
            self._stop(channel)
            return amqp.ChannelCloseOk()
        if isinstance(method, amqp.QueueDeclare):
            return amqp.QueueDeclareOk(
                queue=method.queue, message_count=self.queues.depth(method.queue)
            )
        if isinstance(method, amqp.QueueDelete):
            return amqp.QueueDeleteOk(message_count=self.queues.depth(method.queue))
        if isinstance(method, amqp.BasicQos):
            self.prefetch[channel] = method.prefetch_count
            return amqp.BasicQosOk()
        if isinstance(method, amqp.ConfirmSelect):
            self.confirming[channel] = 0
            return amqp.ConfirmSelectOk()
        if isinstance(method, amqp.BasicConsume):
            tag = method.consumer_tag or f"sink-{channel}"
            self.out.append(
                amqp.encode_method_frame(channel, amqp.BasicConsumeOk(consumer_tag=tag))
            )
            deliverer = _Deliverer(self, channel, method.queue, tag, method.no_ack)
            self.deliverers[channel] = deliverer
            threading.Thread(target=deliverer.run, daemon=True).start()
            return None
        if isinstance(method, amqp.BasicAck):
            self.queues.ack(self.acked, channel, method.delivery_tag)
            return None
        if isinstance(method, amqp.BasicCancel):
            self._stop(channel)
            return amqp.BasicCancelOk(consumer_tag=method.consumer_tag)
        if isinstance(method, amqp.ExchangeDeclare | amqp.ExchangeDelete | amqp.QueueBind):
            reply: type[amqp.Method] = {
                amqp.ExchangeDeclare: amqp.ExchangeDeclareOk,
                amqp.ExchangeDelete: amqp.ExchangeDeleteOk,
                amqp.QueueBind: amqp.QueueBindOk,
            }[type(method)]
            return reply()
        if isinstance(method, amqp.ConnectionTuneOk | amqp.ChannelCloseOk):
            return None
        self.closed = True
        return amqp.ConnectionClose(
            reply_code=540,
            reply_text=f"NOT_IMPLEMENTED - the bench sink does not do {method.NAME}",
            class_id=method.CLASS_ID,
            method_id=method.METHOD_ID,
        )

    def _stop(self, channel: int) -> None:
        deliverer = self.deliverers.pop(channel, None)
        if deliverer is not None:
            deliverer.stopped = True


class _PublishCounter:
    """Counts whole publishes per channel, learning the bytes of a channel's publishes once.

    After one publish has been walked frame by frame, the next ones that match its
    bytes up to the sequence number (and its length) are taken with one comparison.
    Other methods go to the ``on_method`` callback of :meth:`feed`.
    """

    def __init__(self, queues: _Queues) -> None:
        self.queues = queues
        self.counted: dict[int, int] = {}  # channel -> publishes since the last look
        self.layouts: dict[int, tuple[bytes, int, str]] = {}  # channel -> (prefix, length, queue)
        self.pending: dict[int, list[Any]] = {}  # channel -> [queue, start, remaining]
        self.generation = 0

    def forget_positions(self) -> None:
        self.generation += 1

    def feed(self, buffer: bytearray, pos: int, end: int, on_method: Any) -> int:
        startswith = buffer.startswith
        while end - pos >= 8:
            frame_type, channel, size = _FRAME_HEADER.unpack_from(buffer, pos)
            layout = self.layouts.get(channel)
            if layout is not None and frame_type == FRAME_METHOD:
                prefix, length, queue = layout
                start = pos
                while (
                    end - pos >= length
                    and startswith(prefix, pos)
                    and buffer[pos + length - 1] == 0xCE
                ):
                    pos += length
                if pos != start:
                    count = (pos - start) // length
                    self.queues.add(queue, count)
                    self.counted[channel] = self.counted.get(channel, 0) + count
                    continue
            frame_end = pos + 7 + size
            if frame_end >= end:
                break
            self._frame(frame_type, channel, buffer, pos, frame_end, on_method)
            pos = frame_end + 1
        return pos

    def _frame(
        self,
        frame_type: int,
        channel: int,
        buffer: bytearray,
        pos: int,
        frame_end: int,
        on_method: Any,
    ) -> None:
        payload = bytes(buffer[pos + 7 : frame_end])
        if frame_type == FRAME_METHOD:
            if method_index(payload) == BASIC_PUBLISH:
                _exchange, routing_key, _mandatory, _immediate = decode_publish(payload)
                self.pending[channel] = [routing_key, pos, -1, self.generation]
            else:
                on_method(channel, payload)
        elif frame_type == FRAME_HEADER:
            pending = self.pending[channel]
            pending[2] = struct.unpack_from(">Q", payload, 4)[0]
            if pending[2] == 0:
                self._complete(channel)
        elif frame_type == FRAME_BODY:
            pending = self.pending[channel]
            whole = pending[2] == len(payload)
            if whole and len(payload) >= MESSAGE_ID.size:
                publisher = MESSAGE_ID.unpack_from(payload)[0]
                with self.queues.lock:
                    self.queues.body.setdefault(pending[0], (publisher, len(payload)))
                if pending[3] == self.generation:
                    # Everything up to the sequence number is the same in every publish here.
                    start, seq_at = pending[1], pos + 7 + 4
                    self.layouts[channel] = (
                        bytes(buffer[start:seq_at]),
                        frame_end + 1 - start,
                        pending[0],
                    )
            pending[2] -= len(payload)
            if pending[2] <= 0:
                self._complete(channel)

    def _complete(self, channel: int) -> None:
        queue = self.pending.pop(channel)[0]
        self.queues.add(queue, 1)
        self.counted[channel] = self.counted.get(channel, 0) + 1


class _Deliverer:
    """Delivers a queue's messages to one consumer, within its prefetch window."""

    def __init__(
        self, connection: _Connection, channel: int, queue: str, tag: str, no_ack: bool
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.stopped = False

    def run(self) -> None:
        connection, queues = self.connection, self.connection.queues
        while not self.stopped and self.queue not in queues.body:
            time.sleep(0.001)  # the body's shape comes with the first publish
        if self.stopped:
            return
        publisher, size = queues.body[self.queue]
        batch = _DeliveryBatch(self.channel, self.tag, self.queue, publisher, size)
        tag = 0
        prefetch = 0 if self.no_ack else connection.prefetch.get(self.channel, 0)

        def window() -> int:
            if not prefetch:
                return batch.count
            return min(batch.count, prefetch - (tag - connection.acked.get(self.channel, 0)))

        try:
            while not self.stopped and not connection.closed:
                count, first = queues.take(self.queue, window)
                if count:
                    connection.send(batch.encode(tag + 1, first, count))
                    tag += count
        except OSError:
            pass


class _DeliveryBatch:
    """basic.deliver frame sets for one consumer, stamped with tags and sequence numbers."""

    def __init__(self, channel: int, tag: str, queue: str, publisher: int, size: int) -> None:
        framing = deliver_framing(channel, tag, "", queue)
        body = MESSAGE_ID.pack(publisher, 0) + bytes(size - MESSAGE_ID.size)
        content = b"".join(encode_content(channel, b"\x10\x00\x01", body, _FRAME_MAX))
        # framing[0] | tag, redelivered | framing[1] + content up to the seq | seq | rest
        seq_at = len(content) - (size + 1) + 4
        self.head = framing[0]
        self.middle = b"\x00" + framing[1] + content[:seq_at]
        self.tail = content[seq_at + 8 :]
        self.count = max(
            1, min(1000, (256 * 1024) // (len(self.head) + len(self.middle) + len(self.tail) + 16))
        )
        layout = f"{len(self.head)}sQ{len(self.middle)}sQ{len(self.tail)}s"
        self._struct = struct.Struct(">" + layout * self.count)
        self._one = struct.Struct(">" + layout)
        self._values: list[Any] = [self.head, 0, self.middle, 0, self.tail] * self.count

    def encode(self, first_tag: int, first_seq: int, count: int) -> bytes:
        if count == self.count:
            values = self._values
            values[1::5] = range(first_tag, first_tag + count)
            values[3::5] = range(first_seq, first_seq + count)
            return self._struct.pack(*values)
        pack = self._one.pack
        return b"".join(
            pack(self.head, first_tag + i, self.middle, first_seq + i, self.tail)
            for i in range(count)
        )
