"""Training batches from the uint8 cache: gathered by index, on the device.

On a CPU (or when the cache was copied to the GPU) a batch is one gather, done when it is needed.
On CUDA with the cache in host memory (the sharded store, too big for the device), batches come
through a pinned, prefetched host buffer: a thread gathers the next batches from the memory-mapped
shards straight into page-locked buffers while the current step runs, and each buffer is copied to
the GPU with non_blocking=True; a buffer is reused only after its copy has finished (a CUDA event).
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Sequence

import torch


def _gather(images, idx: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return images[idx]
    if hasattr(images, "gather_into"):   # the sharded store: numpy gathers straight into the buffer
        return images.gather_into(idx, out)
    return torch.index_select(images, 0, idx, out=out[:len(idx)])


class PinnedPrefetcher:
    """Yields the batches images[idx] for idx in `indices` on `device`, `depth` batches ahead.

    pin=False (CPU tests) keeps the same thread and buffer logic in ordinary memory."""

    def __init__(self, images, indices: Sequence[torch.Tensor], device: torch.device, depth: int = 2,
                 pin: bool = True):
        self.images, self.indices, self.device = images, list(indices), torch.device(device)
        size = max((len(i) for i in self.indices), default=0)
        shape = (size, *tuple(images.shape[1:]))
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(depth)]
        self.copied: list = [None] * depth   # the CUDA event of each buffer's last copy
        self.ready: queue.Queue = queue.Queue()   # bounded by the buffers: at most `depth` batches ahead
        self.free: queue.Queue = queue.Queue()
        for k in range(depth):
            self.free.put(k)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="batch-prefetch", daemon=True)

    def _fill(self) -> None:
        try:
            for idx in self.indices:
                k = self.free.get()
                if self.stop.is_set():
                    return
                if self.copied[k] is not None:
                    self.copied[k].synchronize()   # the GPU has finished reading this buffer
                self.ready.put((k, _gather(self.images, idx, self.buffers[k])))
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, raised there
            self.ready.put((None, err))

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.thread.start()
        try:
            for _ in self.indices:
                k, batch = self.ready.get()
                if k is None:
                    raise batch
                on_device = batch.to(self.device, non_blocking=True)
                if self.device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record()
                    self.copied[k] = event
                else:
                    on_device = on_device.clone() if on_device.data_ptr() == batch.data_ptr() else on_device
                self.free.put(k)
                yield on_device
        finally:
            self.stop.set()
            self.free.put(0)   # wake the thread if it waits for a buffer
            self.thread.join(timeout=10)


def batches(images, indices: Sequence[torch.Tensor], device: torch.device, prefetch: bool) -> Iterator[torch.Tensor]:
    """images[idx] on `device` for each idx: through PinnedPrefetcher when `prefetch`, else gathered in turn."""
    if prefetch:
        yield from PinnedPrefetcher(images, indices, device, pin=device.type == "cuda")
        return
    for idx in indices:
        yield images[idx].to(device)
