"""A channel on the wire: AMQP methods in, core calls out, and the core's deliveries back.

Theory of operation: a channel is a small state machine over frames.  ``OPEN``
takes methods; basic.publish moves it to ``EXPECT_HEADER``, its content header to
``EXPECT_BODY`` (or straight back when the body is empty), body frames back to
``OPEN`` when the body is complete.  ``CLOSING`` (we sent channel.close) ignores all
but channel.close and channel.close-ok.  A frame that the table does not allow is a
505 UNEXPECTED_FRAME.  Method handlers are looked up by method class in one table.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from .. import amqp
from ..amqp import frames
from ..amqp.frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    append_delivery,
    deliver_framing,
    encode_content,
)
from ..core import Channel, Message
from ..errors import (
    AMQPError,
    AMQPNotImplemented,
    ChannelError,
    CommandInvalid,
    PreconditionFailed,
    UnexpectedFrame,
)

if TYPE_CHECKING:
    from .connection import AMQPConnection

__all__ = ["ChannelState", "ServerChannel"]


class ChannelState(Enum):
    OPEN = "open"
    EXPECT_HEADER = "expect content header"
    EXPECT_BODY = "expect content body"
    CLOSING = "closing"


# Which frame types each state accepts.
_ACCEPTS: dict[ChannelState, frozenset[int]] = {
    ChannelState.OPEN: frozenset({FRAME_METHOD}),
    ChannelState.EXPECT_HEADER: frozenset({FRAME_HEADER}),
    ChannelState.EXPECT_BODY: frozenset({FRAME_BODY}),
    ChannelState.CLOSING: frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY}),
}

_FRAMING_CACHE_LIMIT = 4096


class ServerChannel:
    """One open channel of an AMQP connection; the core channel's delivery sink."""

    __slots__ = (
        "_accepts",
        "_body_size",
        "_chunks",
        "_confirm_sent",
        "_confirmed_upto",
        "_deliveries",
        "_known_properties",
        "_properties",
        "_publish",
        "_received",
        "_state",
        "connection",
        "core",
        "number",
    )

    def __init__(self, connection: AMQPConnection, number: int) -> None:
        self.connection = connection
        self.number = number
        self._state = ChannelState.OPEN
        self._accepts = _ACCEPTS[ChannelState.OPEN]
        self.core: Channel = connection.core.open_channel(number, self)
        # Properties objects by their bytes: publishers mostly repeat a few property
        # sets, and an object keeps what it has worked out (priority, inspection).
        self._known_properties: dict[bytes, amqp.BasicProperties] = {}
        # basic.deliver framing by (consumer tag, exchange, routing key).
        self._deliveries: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}
        # The publish being assembled: exchange, routing key, mandatory, immediate.
        self._publish: tuple[str, str, bool, bool] | None = None
        self._properties = b""
        self._body_size = 0
        self._chunks: list[bytes] = []
        self._received = 0
        # Publisher confirms waiting for the next flush: acks up to this seq.
        self._confirmed_upto = 0
        self._confirm_sent = 0

    @property
    def state(self) -> ChannelState:
        return self._state

    @state.setter
    def state(self, state: ChannelState) -> None:
        # What a state accepts is looked up on the rare state change, not per frame
        # (an Enum hashes in Python).
        self._state = state
        self._accepts = _ACCEPTS[state]

    # -- frames in -----------------------------------------------------------------

    def handle_frame(self, frame_type: int, payload: bytes) -> None:
        if frame_type not in self._accepts:
            raise _unexpected(self._state, frame_type)
        if self._state is ChannelState.CLOSING:
            if frame_type == FRAME_METHOD:
                self._while_closing(payload)
            return
        if frame_type == FRAME_METHOD:
            self._method(payload)
        elif frame_type == FRAME_HEADER:
            self._content_header(payload)
        else:
            self._content_body(payload)

    def _method(self, payload: bytes) -> None:
        index = frames.method_index(payload)
        core = self.core
        if index == frames.BASIC_PUBLISH:
            self._publish = frames.decode_publish(payload)
            self.state = ChannelState.EXPECT_HEADER
        elif index == frames.BASIC_ACK:
            core.ack(*frames.decode_ack(payload))
        elif index == frames.BASIC_NACK:
            core.nack(*frames.decode_nack(payload))
        elif index == frames.BASIC_REJECT:
            core.reject(*frames.decode_reject(payload))
        else:
            method = amqp.decode_method(payload)
            handler = _HANDLERS.get(type(method))
            if handler is None:
                self._special(method)
            else:
                handler(self, method)

    def _special(self, method: amqp.Method) -> None:
        if isinstance(method, amqp.ChannelClose):
            self.connection.channel_closed_by_client(self)
        elif isinstance(method, amqp.ChannelOpen):
            raise ChannelError("second 'channel.open' seen")
        elif isinstance(method, amqp.ChannelCloseOk):
            raise CommandInvalid("unexpected 'channel.close-ok'")
        elif method.CLASS_ID == 10:
            raise CommandInvalid(f"connection method '{method.NAME}' on channel {self.number}")
        else:
            raise CommandInvalid(f"unimplemented method '{method.NAME}'")

    def _while_closing(self, payload: bytes) -> None:
        # After we sent channel.close, only its answer (or a crossing close) counts.
        index = frames.method_index(payload)
        if index == amqp.ChannelCloseOk.INDEX:
            self.connection.forget_channel(self)
        elif index == amqp.ChannelClose.INDEX:
            self.connection.send_method(self.number, amqp.ChannelCloseOk())
            self.connection.forget_channel(self)

    def _content_header(self, payload: bytes) -> None:
        class_id, body_size, properties = frames.decode_content_header(payload)
        if class_id != 60:
            raise UnexpectedFrame(
                f"expected content header for class 60, got one for class {class_id}"
            )
        limit = self.connection.settings.max_message_size
        if body_size > limit:
            self.state = ChannelState.OPEN
            raise PreconditionFailed(_too_large(body_size, limit))
        self._properties = properties
        self._body_size = body_size
        if body_size == 0:
            self._publish_complete(b"")
        else:
            self._chunks = []
            self._received = 0
            self.state = ChannelState.EXPECT_BODY

    def _content_body(self, payload: bytes) -> None:
        received = self._received + len(payload)
        if received > self._body_size:
            raise UnexpectedFrame(
                f"content body of {received} bytes exceeds the {self._body_size} announced in the header"
            )
        if received == self._body_size:
            if self._chunks:
                self._chunks.append(payload)
                payload = b"".join(self._chunks)
                self._chunks = []
            self._publish_complete(payload)
        else:
            self._chunks.append(payload)
            self._received = received

    def publish_whole(
        self, publish: tuple[str, str, bool, bool], properties: bytes, body: bytes
    ) -> None:
        """A basic.publish that arrived together with its content header and body."""
        if not self.connection.publishes:
            self.connection.first_publish()
        if self._state is not ChannelState.OPEN:
            if self._state is ChannelState.CLOSING:
                return
            raise _unexpected(self._state, FRAME_METHOD)
        limit = self.connection.settings.max_message_size
        if len(body) > limit:
            raise PreconditionFailed(_too_large(len(body), limit), 60, 40)
        # Publishers mostly repeat a few property sets: reuse their objects (immutable
        # to the broker), which also keeps what they have worked out about themselves.
        known = self._known_properties
        decoded = known.get(properties)
        if decoded is None:
            if len(known) >= _KNOWN_PROPERTIES_LIMIT:
                known.clear()
            decoded = known[properties] = amqp.BasicProperties(properties)
        try:
            self.core.publish(publish[0], publish[1], publish[2], publish[3], decoded, body)
        except AMQPError as exc:
            exc.class_id, exc.method_id = 60, 40
            raise

    def _publish_complete(self, body: bytes) -> None:
        if not self.connection.publishes:
            self.connection.first_publish()
        self.state = ChannelState.OPEN
        publish = self._publish
        assert publish is not None
        self._publish = None
        exchange, routing_key, mandatory, immediate = publish
        properties = amqp.BasicProperties(self._properties)
        try:
            self.core.publish(exchange, routing_key, mandatory, immediate, properties, body)
        except AMQPError as exc:
            exc.class_id, exc.method_id = 60, 40
            raise

    # -- DeliverySink: the core's traffic out ----------------------------------------

    def deliver(
        self, consumer_tag: str, delivery_tag: int, redelivered: bool, message: Message
    ) -> None:
        connection = self.connection
        key = (consumer_tag, message.exchange, message.routing_key)
        framing = self._deliveries.get(key)
        if framing is None:
            if len(self._deliveries) >= _FRAMING_CACHE_LIMIT:
                self._deliveries.clear()
            framing = self._deliveries[key] = deliver_framing(self.number, *key)
        append_delivery(
            connection.out,
            self.number,
            framing,
            delivery_tag,
            redelivered,
            message.properties.raw,
            message.body,
            connection.frame_max,
        )
        connection.schedule_flush()

    def returned(self, reply_code: int, reply_text: str, message: Message) -> None:
        method = amqp.BasicReturn(
            reply_code=reply_code,
            reply_text=reply_text,
            exchange=message.exchange,
            routing_key=message.routing_key,
        )
        self._send_content(method, message)

    def confirm(self, seq: int, ack: bool) -> None:
        connection = self.connection
        if ack:
            self._confirmed_upto = seq
            connection.confirms_pending.add(self)
            connection.schedule_flush()
            return
        self.flush_confirms()
        connection.out.append(frames.encode_nack(self.number, seq, False))
        self._confirm_sent = seq
        connection.schedule_flush()

    def flush_confirms(self) -> None:
        """Sends one basic.ack for every publish confirmed since the last flush."""
        upto, sent = self._confirmed_upto, self._confirm_sent
        if upto > sent:
            self.connection.out.append(frames.encode_ack(self.number, upto, upto - sent > 1))
            self._confirm_sent = upto

    def consumer_cancelled(self, consumer_tag: str) -> None:
        if self.connection.client_capabilities.get("consumer_cancel_notify"):
            # Sent after the reply to the method being handled (queue.delete-ok first).
            self.connection.after_method.append(
                amqp.encode_method_frame(
                    self.number, amqp.BasicCancel(consumer_tag=consumer_tag, nowait=True)
                )
            )
            self.connection.schedule_flush()

    def fail(self, error: AMQPError) -> None:
        self.connection.fail_channel(error, self.number)

    def _send_content(self, method: amqp.Method, message: Message) -> None:
        connection = self.connection
        connection.out.append(amqp.encode_method_frame(self.number, method))
        connection.out.extend(
            encode_content(self.number, message.properties.raw, message.body, connection.frame_max)
        )
        connection.schedule_flush()

    # -- method handlers -------------------------------------------------------------

    def _reply(self, method: amqp.Method) -> None:
        self.connection.send_method(self.number, method)

    def _reply_when_durable(self, method: amqp.Method) -> None:
        """Replies once the store has what was just recorded (see DESIGN.md, group commit)."""
        self.connection.core.broker.store.sync(lambda: self._reply(method))

    def _channel_flow(self, method: amqp.ChannelFlow) -> None:
        # As RabbitMQ: a client may not pause the broker's deliveries with channel.flow
        # (basic.qos is the way); active=false closes the connection with 540.
        if not method.active:
            raise AMQPNotImplemented("active=false")
        self.core.flow(True)
        self._reply(amqp.ChannelFlowOk(active=True))

    def _access_request(self, method: amqp.AccessRequest) -> None:
        self._reply(amqp.AccessRequestOk(ticket=1))

    def _exchange_declare(self, method: amqp.ExchangeDeclare) -> None:
        self.core.vhost.declare_exchange(
            method.exchange,
            method.type,
            passive=method.passive,
            durable=method.durable,
            auto_delete=method.auto_delete,
            internal=method.internal,
            arguments=method.arguments,
        )
        if not method.nowait:
            self._reply_when_durable(amqp.ExchangeDeclareOk())

    def _exchange_delete(self, method: amqp.ExchangeDelete) -> None:
        self.core.vhost.delete_exchange(method.exchange, if_unused=method.if_unused)
        if not method.nowait:
            self._reply_when_durable(amqp.ExchangeDeleteOk())

    def _exchange_bind(self, method: amqp.ExchangeBind) -> None:
        self.core.vhost.bind_exchange(
            method.destination, method.source, method.routing_key, method.arguments
        )
        if not method.nowait:
            self._reply_when_durable(amqp.ExchangeBindOk())

    def _exchange_unbind(self, method: amqp.ExchangeUnbind) -> None:
        self.core.vhost.unbind_exchange(
            method.destination, method.source, method.routing_key, method.arguments
        )
        if not method.nowait:
            self._reply_when_durable(amqp.ExchangeUnbindOk())

    def _queue_declare(self, method: amqp.QueueDeclare) -> None:
        queue = self.core.declare_queue(
            method.queue,
            passive=method.passive,
            durable=method.durable,
            exclusive=method.exclusive,
            auto_delete=method.auto_delete,
            arguments=method.arguments,
        )
        if method.nowait:
            return
        if queue is None:  # the direct reply-to pseudo-queue: always one consumer, as RabbitMQ
            self._reply(amqp.QueueDeclareOk(queue=method.queue, message_count=0, consumer_count=1))
            return
        self._reply_when_durable(
            amqp.QueueDeclareOk(
                queue=queue.name,
                message_count=queue.message_count,
                consumer_count=queue.consumer_count,
            )
        )

    def _queue_bind(self, method: amqp.QueueBind) -> None:
        core = self.core
        core.vhost.bind_queue(
            core.queue_name(method.queue),
            method.exchange,
            method.routing_key,
            method.arguments,
            core.connection,
        )
        if not method.nowait:
            self._reply_when_durable(amqp.QueueBindOk())

    def _queue_unbind(self, method: amqp.QueueUnbind) -> None:
        core = self.core
        core.vhost.unbind_queue(
            core.queue_name(method.queue),
            method.exchange,
            method.routing_key,
            method.arguments,
            core.connection,
        )
        self._reply_when_durable(amqp.QueueUnbindOk())

    def _queue_purge(self, method: amqp.QueuePurge) -> None:
        count = self.core.queue(method.queue).purge()
        if not method.nowait:
            self._reply(amqp.QueuePurgeOk(message_count=count))

    def _queue_delete(self, method: amqp.QueueDelete) -> None:
        count = self.core.delete_queue(
            method.queue, if_unused=method.if_unused, if_empty=method.if_empty
        )
        if not method.nowait:
            self._reply_when_durable(amqp.QueueDeleteOk(message_count=count))

    def _basic_qos(self, method: amqp.BasicQos) -> None:
        self.core.qos(method.prefetch_size, method.prefetch_count, method.global_)
        self._reply(amqp.BasicQosOk())

    def _basic_consume(self, method: amqp.BasicConsume) -> None:
        tag = self.core.consume(
            method.queue,
            method.consumer_tag,
            no_ack=method.no_ack,
            exclusive=method.exclusive,
            arguments=method.arguments,
        )
        if not method.nowait:
            self._reply(amqp.BasicConsumeOk(consumer_tag=tag))
        self.core.start(tag)

    def _basic_cancel(self, method: amqp.BasicCancel) -> None:
        self.core.cancel(method.consumer_tag)
        if not method.nowait:
            self._reply(amqp.BasicCancelOk(consumer_tag=method.consumer_tag))

    def _basic_get(self, method: amqp.BasicGet) -> None:
        got = self.core.get(method.queue, method.no_ack)
        if got is None:
            self._reply(amqp.BasicGetEmpty())
            return
        delivery_tag, entry, message, message_count = got
        self._send_content(
            amqp.BasicGetOk(
                delivery_tag=delivery_tag,
                redelivered=entry.redelivered,
                exchange=message.exchange,
                routing_key=message.routing_key,
                message_count=message_count,
            ),
            message,
        )

    def _basic_recover(self, method: amqp.BasicRecover) -> None:
        self.core.recover(method.requeue)
        self._reply(amqp.BasicRecoverOk())

    def _basic_recover_async(self, method: amqp.BasicRecoverAsync) -> None:
        self.core.recover(method.requeue)

    def _confirm_select(self, method: amqp.ConfirmSelect) -> None:
        self.core.select_confirm()
        if not method.nowait:
            self._reply(amqp.ConfirmSelectOk())

    def _tx_select(self, method: amqp.TxSelect) -> None:
        self.core.select_tx()
        self._reply(amqp.TxSelectOk())

    def _tx_commit(self, method: amqp.TxCommit) -> None:
        self.core.commit()
        self._reply_when_durable(amqp.TxCommitOk())

    def _tx_rollback(self, method: amqp.TxRollback) -> None:
        self.core.rollback()
        self._reply(amqp.TxRollbackOk())

    # -- closing ---------------------------------------------------------------------

    def close_core(self) -> None:
        """Releases the core channel: consumers cancelled, unacked messages requeued."""
        self._publish = None
        self._chunks = []
        self.connection.confirms_pending.discard(self)
        self.connection.core.close_channel(self.number)


_KNOWN_PROPERTIES_LIMIT = 64
_DEFAULT_MAX_MESSAGE_SIZE = 134_217_728


def _too_large(size: int, limit: int) -> str:
    """RabbitMQ's text: it says "configured" only when the limit is not its default."""
    configured = "" if limit == _DEFAULT_MAX_MESSAGE_SIZE else "configured "
    return f"message size {size} is larger than {configured}max size {limit}"


def _ignore(channel: ServerChannel, method: amqp.Method) -> None:
    pass


# The method handlers of an open channel, by method class: one table for all channels.
_HANDLERS: dict[type[amqp.Method], Callable[[ServerChannel, Any], None]] = {
    amqp.ChannelFlow: ServerChannel._channel_flow,
    amqp.ChannelFlowOk: _ignore,
    amqp.AccessRequest: ServerChannel._access_request,
    amqp.ExchangeDeclare: ServerChannel._exchange_declare,
    amqp.ExchangeDelete: ServerChannel._exchange_delete,
    amqp.ExchangeBind: ServerChannel._exchange_bind,
    amqp.ExchangeUnbind: ServerChannel._exchange_unbind,
    amqp.QueueDeclare: ServerChannel._queue_declare,
    amqp.QueueBind: ServerChannel._queue_bind,
    amqp.QueueUnbind: ServerChannel._queue_unbind,
    amqp.QueuePurge: ServerChannel._queue_purge,
    amqp.QueueDelete: ServerChannel._queue_delete,
    amqp.BasicQos: ServerChannel._basic_qos,
    amqp.BasicConsume: ServerChannel._basic_consume,
    amqp.BasicCancel: ServerChannel._basic_cancel,
    amqp.BasicGet: ServerChannel._basic_get,
    amqp.BasicRecover: ServerChannel._basic_recover,
    amqp.BasicRecoverAsync: ServerChannel._basic_recover_async,
    amqp.ConfirmSelect: ServerChannel._confirm_select,
    amqp.TxSelect: ServerChannel._tx_select,
    amqp.TxCommit: ServerChannel._tx_commit,
    amqp.TxRollback: ServerChannel._tx_rollback,
}


def _unexpected(state: ChannelState, frame_type: int) -> UnexpectedFrame:
    # RabbitMQ's texts; while content is expected the error belongs to basic.publish.
    if state is ChannelState.OPEN:
        return UnexpectedFrame("expected method frame, got non method frame instead")
    if state is ChannelState.EXPECT_HEADER:
        return UnexpectedFrame(
            "expected content header for class 60, got non content header frame instead", 60, 40
        )
    return UnexpectedFrame("expected content body, got non content body frame instead", 60, 40)
