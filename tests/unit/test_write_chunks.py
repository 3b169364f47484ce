"""The chunked, overlapped write schedule of the ingest stage, on fake writers (no Redis)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from filters.events import Event
from infra.settings import Settings
from stream.deliveries import Delivery
from stream.ingest import IngestStage
from stream.write_plan import Prepared
from stream.writers import UserWriteResult


class FakeWriters:
    """User and entity writers that log every pipeline the I/O thread sends; one send may fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.log: list[tuple[str, list[int]]] = []
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def _send(self, kind: str, prepared: Prepared) -> list[Any]:
        with self.lock:
            if len(self.log) == self.fail_at:
                self.log.append(("failed " + kind, []))
                raise redis.ConnectionError("connection lost mid-pipeline")
            self.log.append((kind, [d.offset for ds in prepared.batch.values() for d in ds]))
        return []

    def user_writer(self) -> Any:
        outer = self

        class Users:
            def prepare(self, chunk: Any, watermarks: Any) -> Prepared:
                return Prepared(chunk, [], [])

            def send(self, prepared: Prepared) -> list[Any]:
                return outer._send("user", prepared)

            def finish(self, prepared: Prepared, replies: list[Any]) -> UserWriteResult:
                return UserWriteResult(statuses={p: ["A"] * len(ds) for p, ds in prepared.batch.items()})

        return Users()

    def entity_writer(self) -> Any:
        outer = self

        class Entities:
            def prepare(self, firsts: Any) -> Prepared:
                return Prepared(firsts, [], [])

            def send(self, prepared: Prepared) -> list[Any]:
                return outer._send("entity", prepared)

            def finish(self, prepared: Prepared, replies: list[Any]) -> list[Any]:
                return []

        return Entities()


def stage_with(writers: FakeWriters, chunk_events: int) -> IngestStage:
    stage = object.__new__(IngestStage)
    stage._settings = Settings(worker={"write_chunk_events": chunk_events})
    stage._users = writers.user_writer()
    stage._entities = writers.entity_writer()
    stage._io = ThreadPoolExecutor(max_workers=1)
    return stage


def batch(n: int) -> dict[int, list[Delivery]]:
    ev = Event(event_id="e", type="click", user_id="u", item_id="i", ts=1)
    return {0: [Delivery(k, ev) for k in range(n)]}


def test_chunks_go_out_in_order_and_each_entity_pipeline_follows_its_user_pipeline() -> None:
    writers = FakeWriters()
    stage_with(writers, chunk_events=3)._write(batch(10), {})
    users = [offsets for kind, offsets in writers.log if kind == "user"]
    assert users == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    for k, offsets in enumerate(users):  # E_k after U_k
        assert writers.log.index(("entity", offsets)) > writers.log.index(("user", offsets)), k


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3])
def test_after_a_failed_pipeline_nothing_later_of_the_batch_is_sent(fail_at: int) -> None:
    writers = FakeWriters(fail_at=fail_at)
    stage = stage_with(writers, chunk_events=3)
    with pytest.raises(redis.ConnectionError, match="mid-pipeline"):
        stage._write(batch(12), {})
    stage._io.shutdown(wait=True)  # every queued job has run (or was skipped) by now
    assert len(writers.log) == fail_at + 1 and writers.log[-1][0].startswith("failed")
