"""DiskStore on damaged, foreign or contended data directories, and its upkeep.

Damage is cut at the first bad record of the file it is in, logged with the file and
the offset, and saved under corrupt/; every intact record before it is kept, other
files are unaffected, and the store keeps working.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.store import (
    DiskStore,
    QueueRecord,
    StoreError,
    StoreFormatError,
    StoreLocked,
)
from postoffice.store.disk import _format
from postoffice.store.disk._format import DEFINITIONS_MAGIC, FORMAT_VERSION, SEGMENT_MAGIC

SOON = 1_700_000_000_000  # a time_ms, in epoch milliseconds


def make(path: Path, segment_size: int = 1 << 20) -> DiskStore:
    return DiskStore(path, fsync=False, segment_size=segment_size)


def fill(store: DiskStore, count: int, queue: str = "q", size: int = 50) -> list[int]:
    """Publishes ``count`` messages whose bodies say their number, flushing each."""
    store.put(QueueRecord("/", queue))
    ids = []
    for i in range(count):
        ids.append(store.publish("/", [queue], "", queue, b"p", b"%05d" % i + b"." * size))
        store.flush()
    return ids


def numbers(store: DiskStore, queue: str = "q") -> list[int]:
    return [int(m.body[:5]) for m in store.messages("/", queue)]


def segments(path: Path) -> list[Path]:
    return sorted((path / "messages").glob("*.seg"))


def record_offsets(path: Path) -> list[int]:
    """Where each frame of a file starts."""
    data = path.read_bytes()
    offsets = []
    pos = 24
    while pos < len(data):
        offsets.append(pos)
        pos += 8 + int.from_bytes(data[pos : pos + 4], "little")
    return offsets


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# -- layout, lock, formats --------------------------------------------------------------


def test_every_file_starts_with_magic_and_version(tmp_path: Path) -> None:
    store = make(tmp_path)
    fill(store, 3)
    store.close()
    journal = (tmp_path / "definitions.log").read_bytes()
    assert journal[:8] == DEFINITIONS_MAGIC
    assert int.from_bytes(journal[8:12], "little") == FORMAT_VERSION
    for segment in segments(tmp_path):
        assert segment.read_bytes()[:12] == SEGMENT_MAGIC + FORMAT_VERSION.to_bytes(4, "little")
    assert (tmp_path / "lock").exists()


def test_a_second_store_on_the_directory_is_refused(tmp_path: Path) -> None:
    first = make(tmp_path)
    with pytest.raises(StoreLocked, match=str(tmp_path)) as refused:
        make(tmp_path)
    assert "in use" in str(refused.value)
    first.close()
    second = make(tmp_path)  # the lock went with the first store
    second._crash()
    make(tmp_path).close()  # and with a crashed one


@pytest.mark.parametrize("which", ["definitions.log", "segment"])
def test_a_newer_format_is_refused_and_left_alone(tmp_path: Path, which: str) -> None:
    store = make(tmp_path)
    fill(store, 3)
    store.close()
    path = tmp_path / "definitions.log" if which == "definitions.log" else segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    data += b"\x00\x01 a newer kind of record"
    path.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(StoreFormatError, match="newer postoffice") as refused:
        make(tmp_path)
    assert str(path) in str(refused.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    data[8:12] = FORMAT_VERSION.to_bytes(4, "little")
    path.write_bytes(bytes(data[: len(data) - 25]))
    store = make(tmp_path)  # refusing released the lock
    assert numbers(store) == [0, 1, 2]
    store.close()


def version(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[8:12], "little")


def test_a_format_1_directory_is_read_and_refused_by_format_1_readers_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 2 added timed publish records: files of format 1 are read as they are, and
    a postoffice reading only format 1 refuses a directory this one has opened."""
    with monkeypatch.context() as old:
        old.setattr(_format, "FORMAT_VERSION", 1)
        store = make(tmp_path, segment_size=1024)
        ids = fill(store, 20, size=100)
        store.delivered("/", "q", ids[:1])
        store.settle("/", "q", ids[1:5])
        store.close()
    old_files = [tmp_path / "definitions.log", *segments(tmp_path)]
    assert len(old_files) > 3
    assert {version(path) for path in old_files} == {1}
    store = make(tmp_path, segment_size=1024)
    assert [(m.message_id, m.delivery_count, m.time_ms) for m in store.messages("/", "q")] == [
        (ids[0], 1, 0),
        *((i, 0, 0) for i in ids[5:]),
    ]
    assert list(store.index("/", "q"))[:2] == [(ids[0], 1, 0), (ids[5], 0, 0)]
    later = store.publish("/", ["q"], "", "q", b"p", b"later", SOON)
    store.settle("/", "q", ids[5:10])
    store.close()
    assert version(store._active.path) == 2
    assert all(version(path) == 1 for path in old_files[1:] if path.exists())
    with monkeypatch.context() as old, pytest.raises(StoreFormatError, match="format 2"):
        old.setattr(_format, "FORMAT_VERSION", 1)
        make(tmp_path, segment_size=1024)
    store = make(tmp_path, segment_size=1024)
    assert [(m, e) for m, _, e in store.index("/", "q")] == [
        (ids[0], 0),
        *((i, 0) for i in ids[10:]),
        (later, SOON),
    ]
    store.close()


def test_a_definitions_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    (tmp_path / "definitions.log").write_bytes(b"these are my notes, not a journal")
    with pytest.raises(StoreError, match="not a postoffice definitions journal"):
        make(tmp_path)


# -- damaged message files --------------------------------------------------------------


def test_a_torn_segment_tail_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = make(tmp_path)
    fill(store, 10)
    store.close()
    segment = segments(tmp_path)[0]
    size = segment.stat().st_size
    with segment.open("r+b") as file:
        file.truncate(size - 5)
    last = record_offsets(segment)[-1]
    with caplog.at_level(logging.ERROR, logger="postoffice.store"):
        store = make(tmp_path)
    assert numbers(store) == list(range(9))
    assert f"{segment}: " in caplog.text
    assert f"at offset {last}" in caplog.text
    saved = list((tmp_path / "corrupt").iterdir())
    assert len(saved) == 1
    assert saved[0].stat().st_size == size - 5 - last
    store.publish("/", ["q"], "", "q", b"p", b"00009 again")
    store.close()
    assert numbers(make(tmp_path)) == list(range(10))


def test_a_zero_filled_tail_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = make(tmp_path)
    fill(store, 4)
    store.close()
    segment = segments(tmp_path)[0]
    with segment.open("ab") as file:
        file.write(bytes(4096))
    store = make(tmp_path)
    assert numbers(store) == [0, 1, 2, 3]
    assert "a frame of length 0 (a zero-filled tail)" in caplog.text
    store.close()


def test_a_flipped_byte_cuts_at_the_first_bad_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(tmp_path)
    fill(store, 10)
    store.close()
    segment = segments(tmp_path)[0]
    fifth = record_offsets(segment)[4]
    flip(segment, fifth + 30)
    store = make(tmp_path)
    # Records after the bad one are intact but not trusted: without a sync marker a
    # damaged length would make the rest unreadable, so the file ends at the damage.
    assert numbers(store) == [0, 1, 2, 3]
    assert f"a CRC mismatch at offset {fifth}" in caplog.text
    store.close()


def test_a_damaged_settle_brings_back_only_what_it_settled(tmp_path: Path) -> None:
    store = make(tmp_path)
    ids = fill(store, 6)
    store.settle("/", "q", ids[:2])
    store.flush()
    before = store._active.size
    store.settle("/", "q", ids[2:4])
    store.flush()
    store.settle("/", "q", ids[4:5])
    store.flush()
    store.close()
    flip(segments(tmp_path)[0], before + 12)
    store = make(tmp_path)
    assert numbers(store) == [2, 3, 4, 5]  # the later settle was after the damage too
    store.close()


def test_a_damaged_definitions_journal_keeps_what_precedes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(tmp_path)
    for name in ("a", "b", "c"):
        store.put(QueueRecord("/", name))
        store.flush()
    store.close()
    journal = tmp_path / "definitions.log"
    with journal.open("r+b") as file:
        file.truncate(journal.stat().st_size - 3)
    store = make(tmp_path)
    assert [q.name for q in store.recover().queues] == ["a", "b"]
    assert str(journal) in caplog.text
    store.put(QueueRecord("/", "d"))
    store.close()
    assert [q.name for q in make(tmp_path).recover().queues] == ["a", "b", "d"]


def test_a_missing_segment_loses_only_its_messages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(tmp_path, segment_size=1024)
    fill(store, 40, size=100)
    store.close()
    files = segments(tmp_path)
    assert len(files) > 3
    lost = files[1]
    lost_numbers = {int(m) for m in _bodies_in(lost)}
    lost.unlink()
    store = make(tmp_path, segment_size=1024)
    assert numbers(store) == [n for n in range(40) if n not in lost_numbers]
    store.close()


def _bodies_in(segment: Path) -> list[bytes]:
    data = segment.read_bytes()
    found = []
    for offset in record_offsets(segment):
        if data[offset + 8] == 1:  # a publish record: the body is its tail
            end = offset + 8 + int.from_bytes(data[offset : offset + 4], "little")
            found.append(data[end - 105 : end - 100])
    return found


def test_foreign_files_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = make(tmp_path)
    fill(store, 2)
    store.close()
    messages = tmp_path / "messages"
    (messages / "notes.txt").write_text("hello")
    (messages / "sub").mkdir()
    foreign = messages / "0000000099.seg"
    foreign.write_bytes(b"garbage! " * 10)
    store = make(tmp_path)
    assert numbers(store) == [0, 1]
    assert "notes.txt: not a file postoffice knows" in caplog.text
    assert "0000000099.seg" in caplog.text and "not a postoffice segment" in caplog.text
    assert store._active.number == 100  # never written over
    store.close()
    assert foreign.read_bytes() == b"garbage! " * 10


def test_a_segment_torn_at_creation_is_removed(tmp_path: Path) -> None:
    store = make(tmp_path)
    fill(store, 2)
    store.close()
    torn = tmp_path / "messages" / "0000000042.seg"
    torn.write_bytes(SEGMENT_MAGIC[:5])
    store = make(tmp_path)
    assert not torn.exists()
    assert numbers(store) == [0, 1]
    store.close()


def test_a_record_damaged_while_running_is_an_error_not_a_wrong_body(tmp_path: Path) -> None:
    store = make(tmp_path)
    ids = fill(store, 3)
    segment = segments(tmp_path)[0]
    flip(segment, record_offsets(segment)[1] + 40)
    assert store.read(ids[0])[3].startswith(b"00000")
    with pytest.raises(StoreError, match="corrupt"):
        store.read(ids[1])
    store.close()


# -- upkeep ---------------------------------------------------------------------------


def test_messages_of_a_queue_without_a_definition_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(tmp_path)
    store.put(QueueRecord("/", "q"))
    store.publish("/", ["q", "ghost"], "", "", b"", b"both")
    store.publish("/", ["ghost"], "", "", b"", b"ghost only")
    store.close()
    with caplog.at_level(logging.INFO, logger="postoffice.store"):
        store = make(tmp_path)
    assert "dropping 2 messages of queue 'ghost'" in caplog.text
    assert [m.body for m in store.messages("/", "q")] == [b"both"]
    assert list(store.messages("/", "ghost")) == []
    store.put(QueueRecord("/", "ghost"))  # a new queue of that name starts empty
    store.close()
    store = make(tmp_path)
    assert list(store.messages("/", "ghost")) == []
    store.close()


def test_messages_without_a_definition_are_kept_when_the_journal_was_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(tmp_path)
    store.put(QueueRecord("/", "a"))
    store.flush()
    store.put(QueueRecord("/", "b"))
    store.publish("/", ["a", "b"], "", "", b"", b"x")
    store.close()
    journal = tmp_path / "definitions.log"
    flip(journal, record_offsets(journal)[1] + 10)  # the declaration of b is lost
    store = make(tmp_path)
    assert [q.name for q in store.recover().queues] == ["a"]
    assert "keeping 1 messages of queue 'b'" in caplog.text
    store.put(QueueRecord("/", "b"))
    store.close()
    store = make(tmp_path)
    assert [m.body for m in store.messages("/", "b")] == [b"x"]
    store.close()


def test_settled_segments_are_deleted(tmp_path: Path) -> None:
    store = make(tmp_path, segment_size=2048)
    ids = fill(store, 100, size=100)
    assert len(segments(tmp_path)) > 5
    store.settle("/", "q", ids)
    store.flush()
    assert segments(tmp_path) == [store._active.path]
    store.close()
    store = make(tmp_path, segment_size=2048)
    assert len(segments(tmp_path)) == 1
    store.close()


def test_compaction_frees_segments_pinned_by_a_few_messages(tmp_path: Path) -> None:
    store = make(tmp_path, segment_size=4096)
    store.put(QueueRecord("/", "slow"))
    store.put(QueueRecord("/", "fast"))
    slow = []
    for round_ in range(300):
        if round_ % 10 == 0:
            slow.append(store.publish("/", ["slow"], "", "", b"p", b"%05d" % round_ + bytes(100)))
        fast = [store.publish("/", ["fast"], "", "", b"p", bytes(200)) for _ in range(5)]
        store.settle("/", "fast", fast)
        store.flush()
    store.delivered("/", "slow", slow[:3])
    store.flush()
    # 300 rounds of ~1.1 KiB is ~80 segments; without compaction each would stay, pinned.
    assert len(segments(tmp_path)) < 20
    expected = [(b"%05d" % (10 * i), int(i < 3)) for i in range(30)]
    assert [(m.body[:5], m.delivery_count) for m in store.messages("/", "slow")] == expected
    store.close()
    store = make(tmp_path, segment_size=4096)
    assert [(m.body[:5], m.delivery_count) for m in store.messages("/", "slow")] == expected
    assert [m.message_id for m in store.messages("/", "slow")] == slow
    store.close()


def test_a_compacted_segment_left_behind_by_a_crash_is_harmless(tmp_path: Path) -> None:
    store = make(tmp_path, segment_size=1024)
    ids = fill(store, 30, size=100)
    store.delivered("/", "q", ids[:1])
    store.settle("/", "q", [i for i in ids if i % 7])
    store.flush()
    victims = [s for s in store._segments.values() if s.sealed and s.live]
    copies = {s.path: s.path.read_bytes() for s in victims}
    for segment in victims:
        store._compact(segment)
    store.flush()  # the copies are durable: the originals go
    assert not any(path.exists() for path in copies)
    store.close()
    for path, data in copies.items():  # as if the deletions never reached the disk
        path.write_bytes(data)
    store = make(tmp_path, segment_size=1024)
    found = [(m.message_id, m.delivery_count) for m in store.messages("/", "q")]
    assert found == [(i, int(i == ids[0])) for i in ids if i % 7 == 0]
    store.close()


def test_copies_of_a_compacted_message_in_two_segments_make_one_message(tmp_path: Path) -> None:
    """Found by the model: m1 rewritten behind m2, m2 settled, m1 rewritten again, and
    the process killed each time after the writes, before the old copies were deleted."""
    store = make(tmp_path, segment_size=1 << 20)
    store.put(QueueRecord("/", "q"))
    first = store.publish("/", ["q"], "", "", b"", b"first")
    store.flush()
    store.close()
    store = make(tmp_path, segment_size=1 << 20)
    second = store.publish("/", ["q"], "", "", b"", b"second")
    store._compact(store._segments[1])  # first is rewritten after second
    store._write(store._stage())
    store._crash()
    store = make(tmp_path, segment_size=1 << 20)
    store.settle("/", "q", [second])
    store.flush()
    store._compact(store._segments[2])
    store._write(store._stage())
    store._crash()
    store = make(tmp_path, segment_size=1 << 20)
    assert [(m.message_id, m.body) for m in store.messages("/", "q")] == [(first, b"first")]
    store.close()


def test_compaction_keeps_expires_in_every_copy(tmp_path: Path) -> None:
    """A timed message rewritten by compaction stays a timed record; if a crash leaves
    both copies, either one gives the same time_ms."""
    store = make(tmp_path, segment_size=1024)
    store.put(QueueRecord("/", "a"))
    store.put(QueueRecord("/", "b"))
    ids = [
        store.publish("/", ["a", "b"] if i % 3 == 0 else ["a"], "", "", b"p", bytes(100), e)
        for i, e in enumerate([SOON + i if i % 2 else 0 for i in range(30)])
    ]
    store.delivered("/", "b", ids[:1])
    store.settle("/", "a", [i for n, i in enumerate(ids) if n % 4])
    store.flush()
    victims = [s for s in store._segments.values() if s.sealed and s.live]
    copies = {s.path: s.path.read_bytes() for s in victims}
    for segment in victims:
        store._compact(segment)
    store.flush()
    assert not any(path.exists() for path in copies)
    expected = {
        "a": [(i, 0, SOON + n if n % 2 else 0) for n, i in enumerate(ids) if n % 4 == 0],
        "b": [(i, int(n == 0), SOON + n if n % 2 else 0) for n, i in enumerate(ids) if n % 3 == 0],
    }
    for name, listed in expected.items():
        assert list(store.index("/", name)) == listed
    store.close()
    for path, data in copies.items():  # as if the deletions never reached the disk
        path.write_bytes(data)
    store = make(tmp_path, segment_size=1024)
    for name, listed in expected.items():
        assert list(store.index("/", name)) == listed
        assert [
            (m.message_id, m.delivery_count, m.time_ms) for m in store.messages("/", name)
        ] == listed
    store.close()


def test_a_timed_record_without_a_time_is_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make(tmp_path)
    store.put(QueueRecord("/", "q"))
    first = store.publish("/", ["q"], "", "", b"", b"first", SOON)
    store.publish("/", ["q"], "", "", b"", b"second", SOON)
    store.close()
    path = segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    second = record_offsets(path)[1]
    assert data[second + 8] == 5  # a timed publish
    start, end = second + 8, second + 8 + int.from_bytes(data[second : second + 4], "little")
    data[start + 17 : start + 25] = bytes(8)  # its time_ms, after the publish head
    data[second + 4 : second + 8] = zlib.crc32(data[start:end]).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="postoffice.store"):
        store = make(tmp_path)
    assert "timed publish record without a time" in caplog.text
    assert [(m.message_id, m.time_ms) for m in store.messages("/", "q")] == [(first, SOON)]
    store.close()


def test_the_definitions_journal_is_rewritten_when_mostly_stale(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.put(QueueRecord("/", "kept", arguments={"x": 1}))
    for i in range(6000):
        store.put(QueueRecord("/", "churn", arguments={"i": i}))
        store.delete(QueueRecord("/", "churn"))
        if i % 500 == 0:
            store.flush()
    store.put(QueueRecord("/", "last"))
    store.flush()
    assert (tmp_path / "definitions.log").stat().st_size < 300_000
    store.close()
    shutil.copy(tmp_path / "definitions.log", tmp_path / "copy")
    queues = make(tmp_path).recover().queues
    assert [(q.name, q.arguments) for q in queues] == [("kept", {"x": 1}), ("last", {})]


# -- random damage ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, int]]:
    """A data directory with a few segments of everything, and every body ever stored
    with its time_ms."""
    path = tmp_path_factory.mktemp("populated")
    store = make(path, segment_size=1024)
    for name in ("a", "b"):
        store.put(QueueRecord("/", name, arguments={"n": name}))
    published = {}
    for i in range(60):
        queues = [["a"], ["b"], ["a", "b"]][i % 3]
        body = b"%03d" % i + b"." * (i * 7 % 300)
        time_ms = SOON + i if i % 4 < 2 else 0
        message_id = store.publish("/", queues, "x", "k", b"p", body, time_ms)
        published[body] = time_ms
        if i % 4 == 0:
            store.delivered("/", queues[0], [message_id])
        if i % 5 == 0:
            store.settle("/", queues[-1], [message_id])
        if i % 3 == 0:
            store.flush()
    store.close()
    return path, published


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    damage=st.lists(
        st.tuples(
            st.integers(0, 1000),  # which file
            st.sampled_from(["flip", "truncate", "zero", "garbage"]),
            st.floats(0, 1),  # where in it
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_damage_never_crashes_the_store(
    populated: tuple[Path, dict[bytes, int]], damage: list[tuple[int, str, float]]
) -> None:
    template, published = populated
    path = Path(tempfile.mkdtemp(prefix="store-damage-"))
    try:
        shutil.copytree(template, path, dirs_exist_ok=True)
        files = [path / "definitions.log", *segments(path)]
        in_header = False
        for which, kind, where in damage:
            target = files[which % len(files)]
            data = bytearray(target.read_bytes())
            if not data:
                continue
            at = int(where * (len(data) - 1))
            in_header |= at < 24 and kind != "garbage"
            if kind == "flip":
                data[at] ^= 1 << (which % 8)
            elif kind == "truncate":
                del data[at:]
            elif kind == "zero":
                data[at : at + 64] = bytes(len(data[at : at + 64]))
            else:
                data += bytes(range(which % 256, 256))
            target.write_bytes(bytes(data))
        try:
            store = make(path, segment_size=1024)
        except StoreError:
            assert in_header  # a damaged header: refused (newer format, not a journal)
            return
        for name in ("a", "b"):
            found = list(store.messages("/", name))
            assert all(published.get(m.body) == m.time_ms for m in found)
            assert [m.message_id for m in found] == sorted(m.message_id for m in found)
        store.put(QueueRecord("/", "a"))
        store.publish("/", ["a"], "", "", b"", b"after the damage")
        store.close()
        store = make(path, segment_size=1024)
        assert [m.body for m in store.messages("/", "a")][-1] == b"after the damage"
        store.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
