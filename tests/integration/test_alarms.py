"""The memory alarm: publishers blocked with connection.blocked, consumers unaffected."""

from __future__ import annotations

import pika

from postoffice.server.alarms import ResourceAlarm
from postoffice.testing import RunningBroker, running_broker


def _set_alarm(broker: RunningBroker, active: bool) -> None:
    async def flip() -> None:
        broker.server.set_alarm(active)

    broker.call(flip())


def test_publisher_is_blocked_and_released_while_consumers_go_on() -> None:
    with running_broker() as broker:
        params = pika.URLParameters(broker.url)
        publisher = pika.BlockingConnection(params)
        consumer = pika.BlockingConnection(params)
        events: list[str] = []
        publisher.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
        publisher.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
        out = publisher.channel()
        out.queue_declare("alarmed")
        out.basic_publish("", "alarmed", b"before")

        _set_alarm(broker, True)
        publisher.process_data_events(time_limit=1)
        assert events == ["blocked"]
        out.basic_publish("", "alarmed", b"during")  # written, but not read by the broker

        inbox = consumer.channel()
        _, _, body = inbox.basic_get("alarmed", auto_ack=True)
        assert body == b"before"
        assert inbox.basic_get("alarmed", auto_ack=True) == (None, None, None)

        _set_alarm(broker, False)
        publisher.process_data_events(time_limit=1)
        assert events == ["blocked", "unblocked"]
        received = None
        for _ in range(50):
            received = inbox.basic_get("alarmed", auto_ack=True)[2]
            if received is not None:
                break
            consumer.process_data_events(time_limit=0.1)
        assert received == b"during"
        publisher.close()
        consumer.close()


def test_memory_alarm_turns_on_above_the_limit_and_off_below() -> None:
    readings = iter([100, 300, 250, 150, 90])
    changes: list[bool] = []
    alarm = ResourceAlarm("memory", 200, changes.append, lambda: next(readings))
    for _ in range(5):
        alarm.check()
    assert changes == [True, False]
    assert not alarm.active


def test_disk_alarm_turns_on_below_the_free_limit_and_off_above() -> None:
    readings = iter([500, 40, 10, 60, 70])
    changes: list[bool] = []
    alarm = ResourceAlarm("disk", 50, changes.append, lambda: next(readings), low=True)
    for _ in range(5):
        alarm.check()
    assert changes == [True, False]


def test_a_connection_that_never_publishes_is_not_blocked() -> None:
    with running_broker() as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        events: list[str] = []
        connection.add_on_connection_blocked_callback(lambda *_: events.append("blocked"))
        channel = connection.channel()
        _set_alarm(broker, True)
        declared = channel.queue_declare("consumer-only")  # still read and answered
        assert declared.method.message_count == 0
        assert events == []
        connection.close()
