"""The dynamic batcher on its own, with a fake model: batching, overload, failure, drain."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from imgcls.errors import Overloaded
from imgcls.serve.batching import Batcher
from imgcls.serve.inflight import InFlight


def _image(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.float32)


class _FakeModel:
    """Returns each image's first value as its output row; records batch sizes."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.gate = gate

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batch_sizes.append(len(batch))
        return batch[:, :1, 0, 0]


def test_concurrent_submissions_are_grouped_into_batches_in_order() -> None:
    model = _FakeModel()

    async def scenario() -> list[np.ndarray]:
        async with Batcher(model, max_batch=8, max_wait_ms=50) as batcher:
            return await asyncio.gather(*(batcher.submit([_image(i)]) for i in range(16)))

    outputs = asyncio.run(scenario())
    assert [float(out[0, 0]) for out in outputs] == list(range(16))
    assert max(model.batch_sizes) == 8 and sum(model.batch_sizes) == 16


def test_workers_run_batches_at_once_and_each_takes_what_is_queued() -> None:
    both_running = threading.Barrier(2, timeout=10)  # broken (an error) unless two meet
    sizes: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        both_running.wait()
        return batch[:, :1, 0, 0]

    async def scenario() -> list[np.ndarray]:
        async with Batcher(model, max_batch=4, workers=2) as batcher:
            first = asyncio.ensure_future(batcher.submit([_image(0)]))
            await asyncio.sleep(0.05)  # the first worker now waits at the barrier
            rest = batcher.submit([_image(i) for i in range(1, 4)])
            return await asyncio.gather(first, rest)

    first, rest = asyncio.run(scenario())
    assert sizes == [1, 3]  # the second worker did not wait for the first batch to end
    assert float(first[0, 0]) == 0 and rest[:, 0].tolist() == [1, 2, 3]


def test_by_default_a_lone_image_runs_at_once_and_the_next_batch_gathers_meanwhile() -> None:
    gate = threading.Event()
    model = _FakeModel(gate)

    async def scenario() -> list[np.ndarray]:
        async with Batcher(model, max_batch=8) as batcher:
            first = asyncio.ensure_future(batcher.submit([_image(0)]))
            await asyncio.sleep(0.05)
            assert batcher.depth == 0  # taken by the model without waiting for company
            rest = [asyncio.ensure_future(batcher.submit([_image(i)])) for i in range(1, 6)]
            await asyncio.sleep(0.01)
            assert batcher.depth == 5  # queued while the model is busy
            gate.set()
            return await asyncio.gather(first, *rest)

    outputs = asyncio.run(scenario())
    assert [float(out[0, 0]) for out in outputs] == list(range(6))
    assert model.batch_sizes == [1, 5]


def test_a_full_queue_refuses_at_once_and_queues_nothing() -> None:
    gate = threading.Event()
    model = _FakeModel(gate)

    async def scenario() -> None:
        async with Batcher(model, max_batch=1, max_wait_ms=0, max_queue=2) as batcher:
            first = asyncio.ensure_future(batcher.submit([_image(0)]))
            await asyncio.sleep(0.05)  # the first image is in the (blocked) model
            queued = asyncio.ensure_future(batcher.submit([_image(1), _image(2)]))
            await asyncio.sleep(0.01)
            assert batcher.depth == 2
            with pytest.raises(Overloaded):
                await batcher.submit([_image(3)])
            assert batcher.depth == 2
            gate.set()
            await asyncio.gather(first, queued)

    asyncio.run(scenario())
    assert model.batch_sizes == [1, 1, 1]


def test_a_model_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("model failed")
        return batch[:, :1, 0, 0]

    async def scenario() -> None:
        async with Batcher(flaky, max_batch=4, max_wait_ms=20) as batcher:
            results = await asyncio.gather(
                batcher.submit([_image(1)]), batcher.submit([_image(2)]), return_exceptions=True
            )
            assert all(isinstance(r, RuntimeError) for r in results)
            assert float((await batcher.submit([_image(3)]))[0, 0]) == 3.0

    asyncio.run(scenario())


def test_stop_finishes_queued_images_first() -> None:
    model = _FakeModel()

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(model, max_batch=2, max_wait_ms=1)
        await batcher.__aenter__()
        pending = [asyncio.ensure_future(batcher.submit([_image(i)])) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        return [task.result() for task in pending]

    assert len(asyncio.run(scenario())) == 5


def test_bad_settings_are_refused_with_their_names() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(lambda batch: batch, max_batch=0)


def test_a_batch_alone_on_the_server_runs_on_the_alone_model() -> None:
    in_flight = InFlight()
    loaded, alone = _FakeModel(), _FakeModel()

    async def scenario() -> None:
        async with Batcher(loaded, predict_alone=alone, alone=in_flight.alone) as batcher:
            with in_flight.holding(1):
                await batcher.submit([_image(1)])
            with in_flight.holding(3):  # two more images in flight elsewhere
                await batcher.submit([_image(2)])

    asyncio.run(scenario())
    assert alone.batch_sizes == [1] and loaded.batch_sizes == [1]


def test_images_in_flight_are_counted_across_workers() -> None:
    slots = InFlight.shared(2)
    first, second = InFlight(slots, 0), InFlight(slots, 1)
    with first.holding(2):
        assert first.alone(2) and second.total == 2
        with second.holding(1):
            assert not first.alone(2) and not second.alone(1)
    assert first.total == second.total == 0
