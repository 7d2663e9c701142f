"""Image files through an encoder, a chunk at a time: memory holds one chunk of decoded images,
whatever the number of files. Decoding is the training path's (ssl_core.data.images: resize, centre
crop, the encoder's channels), so a file embeds as it would have trained."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ssl_core.data.images import decode_images
from ssl_core.data.listing import Rejected
from ssl_core.evaluation.protocols import extract_features

CHUNK = 256


@dataclass
class EmbeddedChunk:
    paths: list[str]            # relative to the root the files were listed under
    labels: list[int]           # as given (-1: none)
    vectors: torch.Tensor       # float32 [len(paths), D]
    rejected: list[Rejected] = field(default_factory=list)


def embed_files(encoder: torch.nn.Module, items: list[tuple[Path, int]], root: Path, image_size: int, channels: int,
                device: torch.device = torch.device("cpu"), chunk: int = CHUNK,
                progress: Callable[[int, int], None] | None = None) -> Iterator[EmbeddedChunk]:
    """Yield the embeddings of items [(path, label)] chunk by chunk, in order; unusable files are
    reported in each chunk's `rejected`, never fatal."""
    encoder.eval()
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        decoded = decode_images(part, root, image_size, channels)
        vectors = extract_features(encoder, torch.from_numpy(decoded.images), device)
        yield EmbeddedChunk(decoded.paths, decoded.labels.tolist(), vectors, decoded.rejected)
        if progress is not None:
            progress(min(start + chunk, len(items)), len(items))


def embed_tensor(encoder: torch.nn.Module, images_u8: torch.Tensor, device: torch.device = torch.device("cpu"),
                 chunk: int = CHUNK, progress: Callable[[int, int], None] | None = None) -> Iterator[torch.Tensor]:
    """Yield embeddings of a uint8 cache [N, C, S, S] (e.g. a memory-mapped prepared split) chunk by chunk."""
    encoder.eval()
    for start in range(0, len(images_u8), chunk):
        yield extract_features(encoder, images_u8[start:start + chunk], device)
        if progress is not None:
            progress(min(start + chunk, len(images_u8)), len(images_u8))
