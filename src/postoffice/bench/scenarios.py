"""The scenarios: what each one declares, who publishes where, and who consumes what.

A scenario is a pure function of the options and the broker's address that returns
a plan; :mod:`postoffice.bench.runner` carries plans out.  Names are unique per run
(``bench-<pid>-<random>.<scenario>...``) so two runs never share a queue.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from .client import BrokerAddress
from .loadgen import ConsumerSpec, PublisherSpec
from .options import Options, QueueArgument, cpu_count

__all__ = ["ConnectionsPlan", "FlowPlan", "Plan", "Topology", "build", "unique_prefix"]


@dataclass(frozen=True)
class Topology:
    """What a scenario declares before it starts, and deletes when it ends."""

    queues: tuple[str, ...] = ()
    durable: bool = False
    arguments: tuple[tuple[str, QueueArgument], ...] = ()  # every queue's x- arguments
    exchanges: tuple[tuple[str, str], ...] = ()  # (name, type)
    bindings: tuple[tuple[str, str, str], ...] = ()  # (queue, exchange, routing key)


@dataclass(frozen=True)
class FlowPlan:
    """Publishers and consumers moving messages through a topology.

    ``copies`` is the number of deliveries each published message makes (fanout: one
    per queue).  A ``backlog`` flow starts its consumers only once every publisher is
    done, and reports the fill and the drain apart.  A ``calls`` flow is request-reply:
    its publishers wait for each answer, its consumers answer.
    """

    name: str
    topology: Topology
    publishers: tuple[PublisherSpec, ...]
    consumers: tuple[ConsumerSpec, ...]
    copies: int = 1
    backlog: bool = False
    calls: bool = False
    latency: bool = False

    @property
    def confirms(self) -> bool:
        return any(publisher.confirms for publisher in self.publishers)


@dataclass(frozen=True)
class ConnectionsPlan:
    """Open ``count`` idle connections, each with a channel, and watch the broker's memory."""

    name: str
    address: BrokerAddress
    count: int
    hold: float = 2.0


Plan = FlowPlan | ConnectionsPlan


def unique_prefix() -> str:
    return f"bench-{os.getpid()}-{secrets.token_hex(3)}"


def build(name: str, options: Options, address: BrokerAddress, prefix: str) -> Plan:
    """The plan of scenario ``name``; ``selftest`` has the shape of ``transient``."""
    builder = _BUILDERS["transient" if name == "selftest" else name]
    plan = builder(_Context(name, options, address, f"{prefix}.{name}"))
    if isinstance(plan, FlowPlan) and options.queue_arguments:
        # Every scenario's queues, whatever their shape (options refuses the others).
        topology = replace(plan.topology, arguments=options.queue_arguments)
        plan = replace(plan, topology=topology)
    return plan


@dataclass(frozen=True)
class _Context:
    name: str
    options: Options
    address: BrokerAddress
    prefix: str

    def queues(self, default: int) -> tuple[str, ...]:
        count = self.options.queues or default
        return tuple(f"{self.prefix}.q{i}" for i in range(count))

    def publishers(
        self,
        routes: tuple[tuple[str, str], ...],
        *,
        default: int = 1,
        persistent: bool = False,
        confirms: bool = False,
        timed: bool = False,
        rate: float | None = None,
    ) -> tuple[PublisherSpec, ...]:
        """Publishers sharing the count and the rate; publisher i starts at route i."""
        options = self.options
        count = options.publishers if options.publishers is not None else default
        total_rate = options.rate if options.rate is not None else rate
        specs = []
        for index in range(count):
            share = options.count // count + (1 if index < options.count % count else 0)
            if options.count and not share:
                continue
            shift = index % len(routes)
            specs.append(
                PublisherSpec(
                    index=index,
                    slot=index,
                    address=self.address,
                    routes=routes[shift:] + routes[:shift],
                    size=options.size,
                    persistent=persistent,
                    confirms=confirms,
                    window=options.confirm_window,
                    count=share,
                    duration=options.duration,
                    rate=total_rate / count if total_rate else 0.0,
                    timed=timed,
                    warmup=options.warmup,
                    stall_timeout=options.stall_timeout,
                    priorities=options.priorities,
                )
            )
        return tuple(specs)

    def consumers(
        self,
        queues: tuple[str, ...],
        publishers: int,
        *,
        default: int = 1,
        autoack: bool = False,
        timed: bool = False,
        first_slot: int = 0,
    ) -> tuple[ConsumerSpec, ...]:
        """Consumer processes, queue i going to consumer i mod N, each queue on its own channel.

        With fewer queues than consumers, consumers share queues (competing consumers).
        """
        options = self.options
        count = options.consumers if options.consumers is not None else default
        specs = []
        for index in range(count):
            mine = queues[index::count] or (queues[index % len(queues)],)
            specs.append(
                ConsumerSpec(
                    index=index,
                    slot=first_slot + index,
                    address=self.address,
                    queues=mine,
                    publishers=max(publishers, 1),
                    prefetch=options.prefetch,
                    ack_every=min(options.ack_every, options.prefetch or options.ack_every),
                    autoack=autoack,
                    timed=timed,
                    warmup=options.warmup,
                    priorities=options.priorities,
                )
            )
        return tuple(specs)


def _one_queue(context: _Context, **flags: bool) -> FlowPlan:
    """One queue, default exchange: transient, autoack, persistent."""
    persistent = flags.get("persistent", False)
    queues = context.queues(1)
    routes = tuple(("", queue) for queue in queues)
    publishers = context.publishers(routes, persistent=persistent, confirms=persistent)
    consumers = context.consumers(
        queues,
        len(publishers),
        default=len(queues),
        autoack=flags.get("autoack", False),
        first_slot=len(publishers),
    )
    return FlowPlan(context.name, Topology(queues, durable=persistent), publishers, consumers)


def _transient(context: _Context) -> FlowPlan:
    return _one_queue(context)


def _autoack(context: _Context) -> FlowPlan:
    return _one_queue(context, autoack=True)


def _persistent(context: _Context) -> FlowPlan:
    return _one_queue(context, persistent=True)


def _confirms(context: _Context) -> FlowPlan:
    queues = context.queues(1)
    publishers = context.publishers(tuple(("", queue) for queue in queues), confirms=True)
    return FlowPlan(context.name, Topology(queues), publishers, ())


def _fanout(context: _Context) -> FlowPlan:
    queues = context.queues(10)
    exchange = f"{context.prefix}.x"
    publishers = context.publishers(((exchange, ""),))
    consumers = context.consumers(
        queues, len(publishers), default=min(len(queues), cpu_count()), first_slot=len(publishers)
    )
    topology = Topology(
        queues,
        exchanges=((exchange, "fanout"),),
        bindings=tuple((queue, exchange, "") for queue in queues),
    )
    return FlowPlan(context.name, topology, publishers, consumers, copies=len(queues))


def _topic(context: _Context) -> FlowPlan:
    """Each queue has ``--bindings`` bindings ``bench.<q>.<b>.*``; each key matches one."""
    queues = context.queues(10)
    exchange = f"{context.prefix}.x"
    per_queue = context.options.bindings
    bindings = tuple(
        (queue, exchange, f"bench.{q}.{b}.*")
        for q, queue in enumerate(queues)
        for b in range(per_queue)
    )
    # Keys cycle over the queues first, so that every batch feeds every queue.
    routes = tuple(
        (exchange, f"bench.{q}.{b}.x") for b in range(per_queue) for q in range(len(queues))
    )
    publishers = context.publishers(routes)
    consumers = context.consumers(
        queues, len(publishers), default=min(len(queues), cpu_count()), first_slot=len(publishers)
    )
    topology = Topology(queues, exchanges=((exchange, "topic"),), bindings=bindings)
    return FlowPlan(context.name, topology, publishers, consumers)


def _many_queues(context: _Context) -> FlowPlan:
    queues = context.queues(100)
    publishers = context.publishers(tuple(("", queue) for queue in queues))
    consumers = context.consumers(
        queues, len(publishers), default=min(len(queues), cpu_count()), first_slot=len(publishers)
    )
    return FlowPlan(context.name, Topology(queues), publishers, consumers)


def _rpc(context: _Context) -> FlowPlan:
    queues = context.queues(1)
    publishers = context.publishers(tuple(("", queue) for queue in queues))
    consumers = context.consumers(queues, len(publishers), first_slot=len(publishers))
    return FlowPlan(context.name, Topology(queues), publishers, consumers, calls=True)


def _latency(context: _Context) -> FlowPlan:
    queues = context.queues(1)
    publishers = context.publishers(tuple(("", queue) for queue in queues), timed=True, rate=1000.0)
    consumers = context.consumers(queues, len(publishers), timed=True, first_slot=len(publishers))
    return FlowPlan(context.name, Topology(queues), publishers, consumers, latency=True)


def _backlog(context: _Context) -> FlowPlan:
    queues = context.queues(1)
    publishers = context.publishers(tuple(("", queue) for queue in queues), confirms=True)
    consumers = context.consumers(queues, len(publishers), first_slot=len(publishers))
    return FlowPlan(context.name, Topology(queues), publishers, consumers, backlog=True)


def _connections(context: _Context) -> ConnectionsPlan:
    return ConnectionsPlan(context.name, context.address, context.options.connections)


_BUILDERS: dict[str, Callable[[_Context], Plan]] = {
    "transient": _transient,
    "autoack": _autoack,
    "persistent": _persistent,
    "confirms": _confirms,
    "fanout": _fanout,
    "topic": _topic,
    "many-queues": _many_queues,
    "rpc": _rpc,
    "latency": _latency,
    "connections": _connections,
    "backlog": _backlog,
}
