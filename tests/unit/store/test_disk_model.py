"""DiskStore against a model: random publish/delivered/settle/flush/restart/crash.

The model keeps two states of every queue: ``current`` (everything done so far) and
``durable`` (as of the last flush).  A clean restart must give back ``current``; a
crash (the ``_crash`` hook drops every unflushed byte, as ``kill -9`` before a write
would) must give back ``durable`` exactly: nothing flushed is lost, nothing settled
and flushed comes back, delivery counts are those flushed.  A crash between a flush's
writes and its fsyncs (the process dies, the page cache lives) gives ``current``.  Tiny segments make rolls,
deletions of settled segments and compactions happen all the time.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from postoffice.store import DiskStore, QueueRecord

QUEUES = ("a", "b", "c")
SOON = 1_700_000_000_000  # a time_ms, in epoch milliseconds
# queue -> message id -> [body, delivery count, time_ms]; dicts keep publish (= id) order.
State = dict[str, dict[int, list[object]]]


class DiskStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.store = self._open()
        self.current: State = {name: {} for name in QUEUES}
        self.durable: State = copy.deepcopy(self.current)
        self.published = 0

    def _open(self) -> DiskStore:
        return DiskStore(self.directory, fsync=False, segment_size=1024)

    @initialize()
    def declare(self) -> None:
        for name in QUEUES:
            self.store.put(QueueRecord("/", name))
        self.store.flush()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- operations -----------------------------------------------------------------

    @rule(
        queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3, unique=True),
        size=st.sampled_from([0, 10, 200, 900, 3000]),
        time_ms=st.sampled_from([0, 0, SOON, 2**63 - 1, -1]),
    )
    def publish(self, queues: list[str], size: int, time_ms: int) -> None:
        self.published += 1
        body = (b"%d:" % self.published + b"." * size)[:size]
        message_id = self.store.publish("/", queues, "ex", "rk", b"props", body, time_ms)
        for name in queues:
            self.current[name][message_id] = [body, 0, time_ms]

    @rule(name=st.sampled_from(QUEUES), data=st.data())
    def delivered(self, name: str, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from([*self.current[name], 10**9]), max_size=4))
        self.store.delivered("/", name, ids)
        for message_id in ids:
            if message_id in self.current[name]:
                count = self.current[name][message_id][1]
                assert isinstance(count, int)
                self.current[name][message_id][1] = count + 1

    @rule(name=st.sampled_from(QUEUES), data=st.data())
    def settle(self, name: str, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from([*self.current[name], 10**9]), max_size=6))
        self.store.settle("/", name, ids)
        for message_id in ids:
            self.current[name].pop(message_id, None)

    @rule(name=st.sampled_from(QUEUES))
    def settle_all(self, name: str) -> None:
        self.store.settle("/", name, list(self.current[name]))
        self.current[name].clear()

    @rule()
    def delete_and_redeclare_c(self) -> None:
        self.store.delete(QueueRecord("/", "c"))
        self.store.put(QueueRecord("/", "c"))
        self.current["c"].clear()

    @rule()
    def flush(self) -> None:
        self.store.flush()
        self.durable = copy.deepcopy(self.current)

    @precondition(lambda self: self._compactable())
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        segment = data.draw(st.sampled_from(self._compactable()))
        self.store._compact(segment)

    def _compactable(self) -> list[object]:
        store = self.store
        return [
            s
            for s in store._segments.values()
            if s.sealed and not s.pending and not s.doomed and s.live and s is not store._active
        ]

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = self._open()
        self.durable = copy.deepcopy(self.current)

    @rule()
    def crash(self) -> None:
        self.store._crash()
        self.store = self._open()
        self.current = copy.deepcopy(self.durable)

    @rule()
    def crash_after_write(self) -> None:
        """``kill -9`` between a flush's writes and its fsync: the page cache keeps them."""
        self.store._write(self.store._stage())
        self.store._crash()
        self.store = self._open()
        self.durable = copy.deepcopy(self.current)

    # -- checks ---------------------------------------------------------------------

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        for name in QUEUES:
            found = [
                (m.message_id, m.body, m.delivery_count, m.redelivered, m.time_ms)
                for m in self.store.messages("/", name)
            ]
            expected = [
                (message_id, body, count, count != 0, time_ms)
                for message_id, (body, count, time_ms) in self.current[name].items()
            ]
            assert found == expected, name
            assert list(self.store.index("/", name)) == [
                (message_id, count, time_ms)
                for message_id, (_, count, time_ms) in self.current[name].items()
            ], name
            for message_id, (body, _, _) in self.current[name].items():
                assert self.store.read(message_id)[2:] == (b"props", body)

    @invariant()
    def settled_segments_are_deleted(self) -> None:
        store = self.store
        if store._dirty:
            return
        for segment in store._segments.values():
            if segment.sealed and not segment.doomed:
                assert segment.live, f"{segment} is fully settled and flushed but still there"


DiskStoreMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_disk_store_matches_the_model = DiskStoreMachine.TestCase
