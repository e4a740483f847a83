"""Training images as a torch dataset and loader: reproducible augmentation, batches padded like mmdetection's.

Every image's random draws come from a generator seeded by (seed, epoch, index), so a batch is the same whatever
the number of workers or processes, and an epoch can be replayed on resume. An image that cannot be read inside a
worker comes back as a marker, and the loader raises it in the main process as one
:class:`~maedet.errors.MaeDetError` sentence naming the file (never a worker's traceback).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from maedet.detect.run import read_image
from maedet.errors import MaeDetError

from .coco_data import ImageRecord
from .interrupt import ignore_stop_signals
from .transforms import TransformedImage

__all__ = ["Batch", "DetectionDataset", "DetectionItem", "DetectionLoader", "collate", "make_loader", "mix_seed"]

Transform = Callable[[np.ndarray, np.ndarray, torch.Generator | None], TransformedImage]


def mix_seed(*parts: int) -> int:
    """One well-mixed 63-bit seed from several integers (numpy's SeedSequence)."""
    words = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1


@dataclass
class DetectionItem:
    """One image ready for the network, with its target in torchvision's convention."""

    image: torch.Tensor  # (3, pad_h, pad_w) float32 normalised
    target: dict[str, torch.Tensor]  # {"boxes": (N, 4) float32 xyxy, "labels": (N,) int64}
    image_id: int
    pad_size: tuple[int, int]
    image_size: tuple[int, int]


@dataclass(frozen=True)
class _ItemError:
    """An image that could not be read, carried out of a worker as data."""

    message: str


@dataclass
class Batch:
    """Images padded with 0 to the batch's largest H and W; per image its target, pad size and id."""

    images: torch.Tensor  # (B, 3, H, W)
    targets: list[dict[str, torch.Tensor]]
    pad_sizes: list[tuple[int, int]]
    image_ids: list[int]
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        targets = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in self.targets]
        images = self.images.to(device, non_blocking=non_blocking)
        return Batch(images, targets, self.pad_sizes, self.image_ids, self.image_sizes)


def _read(path: Path) -> np.ndarray:
    """:func:`maedet.detect.run.read_image`, with PIL's refusal of a decompression bomb as a sentence too."""
    from PIL import Image

    try:
        return read_image(path)
    except Image.DecompressionBombError:
        raise MaeDetError(
            f"image {str(path)!r} is too large to decode ({Image.MAX_IMAGE_PIXELS} pixels at most)."
        ) from None


class DetectionDataset(Dataset):
    """Records + a transform; ``set_epoch`` changes the augmentation draws (call it before each epoch)."""

    def __init__(self, records: Sequence[ImageRecord], transform: Transform, *, seed: int = 0) -> None:
        self.records = list(records)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> DetectionItem:
        record = self.records[index]
        out = self.transform(_read(record.path), record.boxes, self.generator(index))
        target = {"boxes": out.boxes.float(), "labels": torch.from_numpy(record.labels.copy())}
        return DetectionItem(out.image, target, record.image_id, out.pad_size, out.image_size)


class _Guarded(Dataset):
    """The dataset seen by the workers: a read error becomes an :class:`_ItemError`, not an exception."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> DetectionItem | _ItemError:
        try:
            return self.dataset[index]
        except MaeDetError as exc:
            return _ItemError(str(exc))


def collate(items: Sequence[DetectionItem]) -> Batch:
    """Stack images at the top left of the largest H × W, padding with 0 (after normalisation)."""
    if not items:
        raise MaeDetError("cannot make a batch of no images.")
    h = max(int(it.image.shape[1]) for it in items)
    w = max(int(it.image.shape[2]) for it in items)
    images = items[0].image.new_zeros(len(items), 3, h, w)
    for i, it in enumerate(items):
        images[i, :, : it.image.shape[1], : it.image.shape[2]] = it.image
    return Batch(
        images,
        [it.target for it in items],
        [it.pad_size for it in items],
        [it.image_id for it in items],
        [it.image_size for it in items],
    )


def _collate_guarded(items: Sequence[DetectionItem | _ItemError]) -> Batch | _ItemError:
    for it in items:
        if isinstance(it, _ItemError):
            return it
    return collate(items)  # type: ignore[arg-type]


class _FromPosition(Sampler[int]):
    """The wrapped sampler's order from position ``start`` on (resuming inside an epoch); the order itself is
    drawn whole, so the remaining indices are those an uninterrupted epoch would have given."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.start = 0

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.start, None)


class DetectionLoader:
    """torch's DataLoader over a :class:`DetectionDataset`, with per-epoch seeding and read errors as sentences.

    ``set_epoch(e)`` (call it before each epoch) reseeds the shuffle, the augmentation and a distributed sampler
    from (seed, e) alone, so epoch ``e`` is the same batches whether it follows epoch ``e − 1`` or a resume;
    ``set_epoch(e, start_batch=k)`` gives that epoch's batches from the k-th on (a resume inside an epoch).
    ``len()`` is the number of batches the next iteration gives.
    """

    def __init__(self, dataset: Dataset, loader: DataLoader, sampler: _FromPosition, seed: int, shuffle_gen):
        self.dataset = dataset
        self.loader = loader
        self._position = sampler
        self.sampler = sampler.inner
        self.seed = seed
        self.epoch = 0
        self._shuffle_gen = shuffle_gen
        self.set_epoch(0)

    @property
    def batch_size(self) -> int:
        return int(self.loader.batch_size or 1)

    @property
    def batches_per_epoch(self) -> int:
        full = len(self.sampler)  # type: ignore[arg-type]
        return full // self.batch_size if self.loader.drop_last else -(-full // self.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise MaeDetError(
                f"cannot start epoch {epoch} at batch {start_batch}: an epoch has {self.batches_per_epoch} batches."
            )
        self.epoch = int(epoch)
        self._position.start = int(start_batch) * self.batch_size
        self._shuffle_gen.manual_seed(mix_seed(self.seed, self.epoch, 1))
        assert self.loader.generator is not None
        self.loader.generator.manual_seed(mix_seed(self.seed, self.epoch, 2))  # workers' base seed
        for owner in (self.dataset, self.sampler):
            set_epoch = getattr(owner, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        batches = iter(self.loader)
        try:
            for batch in batches:
                if isinstance(batch, _ItemError):
                    raise MaeDetError(batch.message)
                yield batch
        finally:
            del batches  # stops the workers now, not when the exception's frames are freed


def _check_sizes(batch_size: int, workers: int, samples: int, drop_last: bool) -> None:
    if batch_size < 1:
        raise MaeDetError(f"the batch size must be at least 1, got {batch_size}.")
    if workers < 0:
        raise MaeDetError(f"the number of loader workers cannot be negative, got {workers}.")
    if samples == 0:
        raise MaeDetError("the data set holds no images.")
    if drop_last and batch_size > samples:
        raise MaeDetError(
            f"a batch of {batch_size} images is larger than the {samples} images available, so no batch would run."
        )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler | None = None,
    shuffle: bool = False,
    workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DetectionLoader:
    """Batches of ``dataset`` (:func:`collate`), reproducible from ``seed``; see :class:`DetectionLoader`.

    ``sampler`` (a ``DistributedSampler`` under DDP) replaces the shuffle; its ``set_epoch`` is called for you.
    The dataset's own ``seed`` is set to ``seed``.
    """
    shuffle_gen = torch.Generator()
    if sampler is None:
        sampler = RandomSampler(dataset, generator=shuffle_gen) if shuffle else SequentialSampler(dataset)
    _check_sizes(batch_size, workers, len(sampler), drop_last)  # type: ignore[arg-type]
    if hasattr(dataset, "seed"):
        dataset.seed = int(seed)
    position = _FromPosition(sampler)
    loader = DataLoader(
        _Guarded(dataset),
        batch_size=batch_size,
        sampler=position,
        num_workers=workers,
        collate_fn=_collate_guarded,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # the workers' base seed, never drawn from the global RNG
        worker_init_fn=ignore_stop_signals if workers else None,
    )
    return DetectionLoader(dataset, loader, position, int(seed), shuffle_gen)
