"""Score rewards on a worker thread so that scoring batch n overlaps the rollout of batch n+1.

On CUDA the worker runs on its own stream: ``submit`` records an event on the caller's current stream
and the worker waits for it before reading the images (so it never reads a half-written batch), and the
worker synchronises its stream before resolving the future (so results are complete when ``result()``
returns). On CPU torch kernels release the GIL, so the overlap is real there too.
One worker keeps results in submission order and keeps the (non-thread-safe) models on one thread.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch


class AsyncScorer:
    def __init__(self, scorer: Callable, device=None):
        self.scorer = scorer
        self.device = torch.device(device) if device is not None else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrl-reward")
        self._stream = None
        if self.device is not None and self.device.type == "cuda":
            self._stream = torch.cuda.Stream(device=self.device)

    def _run(self, ready_event, images, prompts, metadata, kwargs):
        if self._stream is None:
            return self.scorer(images, prompts, metadata, **kwargs)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready_event)
            # the images were allocated on the caller's stream; tell the allocator they are used here too
            images.record_stream(self._stream)
            out = self.scorer(images, prompts, metadata, **kwargs)
        self._stream.synchronize()
        return out

    def submit(self, images: torch.Tensor, prompts, metadata=None, **kwargs) -> Future:
        ready = None
        if self._stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return self._pool.submit(self._run, ready, images, list(prompts), metadata, kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "AsyncScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
