"""DiskStore when the disk fails under it: a full disk, a short write, a failed fsync.

A flush that cannot make its data durable raises and runs none of its callbacks (no
confirm for unwritten data).  A full disk is retried by the next flush; any other
I/O error fails the store for good.  Either way a restart keeps every intact record.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from postoffice.store import DiskStore, QueueRecord, StoreFailed, StoreWriteError
from postoffice.store.disk import store as store_module


def make(path: Path) -> DiskStore:
    return DiskStore(path, fsync=True, segment_size=1 << 20)


def bodies(store: DiskStore) -> list[bytes]:
    return [m.body for m in store.messages("/", "q")]


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    store = make(tmp_path)
    store.put(QueueRecord("/", "q"))
    store.publish("/", ["q"], "", "q", b"", b"safe")
    store.flush()
    return store


def full_disk(monkeypatch: pytest.MonkeyPatch, after: int | None = None) -> None:
    """Every pwrite fails with ENOSPC (after writing ``after`` bytes of the first, if given)."""
    real = os.pwrite
    budget = [after]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if budget[0]:
            written = real(fd, bytes(data)[: budget[0]], offset)
            budget[0] = 0
            return written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", pwrite)


def test_a_full_disk_fails_the_flush_and_the_next_one_retries(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    confirms: list[str] = []
    woken: list[int] = []
    store.wakeup = lambda: woken.append(1)
    store.publish("/", ["q"], "", "q", b"", b"pending")
    store.sync(lambda: confirms.append("pending"))
    full_disk(monkeypatch)
    with pytest.raises(StoreWriteError, match="No space left") as failed:
        store.flush()
    assert failed.value.errno == errno.ENOSPC
    assert str(tmp_path) in str(failed.value)
    assert confirms == []
    with pytest.raises(StoreWriteError):
        store.flush()  # still full
    store.publish("/", ["q"], "", "q", b"", b"later")
    assert len(woken) == 2  # a failed flush leaves the store asking for another
    monkeypatch.undo()
    store.flush()
    assert confirms == ["pending"]
    store.close()
    assert bodies(make(tmp_path)) == [b"safe", b"pending", b"later"]


def test_a_short_write_then_a_crash_keeps_every_intact_record(
    store: DiskStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    confirms: list[int] = []
    for i in range(20):
        store.publish("/", ["q"], "", "q", b"", b"unconfirmed %d" % i)
    store.sync(lambda: confirms.append(1))
    full_disk(monkeypatch, after=100)  # half a record reaches the file
    with pytest.raises(StoreWriteError):
        store.flush()
    assert confirms == []
    monkeypatch.undo()
    store._crash()
    reopened = make(tmp_path)
    found = bodies(reopened)
    # The records wholly inside the 100 bytes are intact and kept (never confirmed,
    # but a publisher may see them again); the torn one after them is cut.
    assert 1 < len(found) < 21
    assert found == [b"safe"] + [b"unconfirmed %d" % i for i in range(len(found) - 1)]
    assert "messages/0000000001.seg" in caplog.text
    reopened.publish("/", ["q"], "", "q", b"", b"after")
    reopened.close()
    assert bodies(make(tmp_path)) == [*found, b"after"]


def test_a_failed_fsync_fails_the_store_for_good(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    confirms: list[int] = []
    store.publish("/", ["q"], "", "q", b"", b"maybe")
    store.sync(lambda: confirms.append(1))

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(store_module, "_fdatasync", fdatasync)
    with pytest.raises(StoreFailed, match="cannot sync"):
        store.flush()
    monkeypatch.undo()
    assert confirms == []
    with pytest.raises(StoreFailed):
        store.publish("/", ["q"], "", "q", b"", b"refused")
    with pytest.raises(StoreFailed):
        store.sync(lambda: confirms.append(2))
    with pytest.raises(StoreFailed):
        store.flush()
    store.close()  # releases the directory without writing
    assert confirms == []
    found = bodies(make(tmp_path))
    assert found[0] == b"safe"
    assert found[1:] in ([], [b"maybe"])  # written, maybe durable, never confirmed


def test_an_io_error_while_writing_fails_the_store(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def pwrite(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    store.publish("/", ["q"], "", "q", b"", b"lost")
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(StoreFailed, match="Input/output error"):
        store.flush()
    monkeypatch.undo()
    store.close()
    assert bodies(make(tmp_path)) == [b"safe"]


def test_a_full_disk_at_start_up_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_disk(monkeypatch)
    with pytest.raises(StoreWriteError, match="No space left"):
        make(tmp_path)
    monkeypatch.undo()
    make(tmp_path).close()  # the lock was released
