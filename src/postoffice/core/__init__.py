"""The broker model: vhosts, exchanges, bindings, queues, consumers, delivery state.

Pure Python, no I/O; time comes from an injected clock; consumers are reached
through a :class:`DeliverySink`, so a network channel and an in-process client plug
in the same way.
"""

from .broker import Broker
from .channel import Channel, Consumer, DeliverySink
from .clock import Clock, ManualClock, SystemClock
from .connection import Connection
from .exchange import EXCHANGE_TYPES, Binding, Exchange
from .message import Message, Properties, QueueEntry
from .queue import Queue
from .vhost import DIRECT_REPLY_TO, VHost

__all__ = [
    "DIRECT_REPLY_TO",
    "EXCHANGE_TYPES",
    "Binding",
    "Broker",
    "Channel",
    "Clock",
    "Connection",
    "Consumer",
    "DeliverySink",
    "Exchange",
    "ManualClock",
    "Message",
    "Properties",
    "Queue",
    "QueueEntry",
    "SystemClock",
    "VHost",
]
