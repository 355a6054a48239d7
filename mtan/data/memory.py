"""Fast access: a whole dataset held in (GPU or host) memory as compact tensors.

Reading thousands of small ``.npy`` files per epoch costs more than the network on a fast
GPU. :class:`InMemoryDataset` loads a dataset once and keeps it resident in compact types:

=========  ==========================  ================================================
field      stored as                   precision
=========  ==========================  ================================================
image      uint8 (x * 255, rounded)    exact for 8-bit sources (JPEG/PNG, x = k / 255);
                                       otherwise within 1/510
semantic   int8 (int16 beyond 127)     exact
depth      16-bit ``p``, v = p / 65535  exact: used when every stored value is p / 65535
                                       (the CityScapes release convention)
           float16 otherwise           relative error <= 2**-11 (about 0.05 %), up to 65504
normal     int8 (x * 127, rounded)     components within 1/254; vectors re-normalised on
                                       decode: angle error below 0.5 degree
           or float16 (``normal_dtype``)  components within 2**-11
=========  ==========================  ================================================

CityScapes at 128 x 256 (image + 7-class labels + depth) takes 6 bytes per pixel:
196,608 bytes per frame, 589,824,000 bytes (562.5 MiB) for 3,000 frames.

The 16-bit depth codes p (0..65535) are kept in an int16 tensor holding the same 16 bits,
because torch's uint16 has few kernels (e.g. on the GPU); decoding reads them back unsigned.

``iter_batches`` yields ready float batches on the storage device by indexing the resident
tensors, with optional augmentation applied to the whole batch there.
"""
from __future__ import annotations

import json
import math
import time
from typing import Callable, Iterator

from safetensors import safe_open
from safetensors.torch import save_file
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mtan.data.augment import BatchAugment
from mtan.data.common import check_sample_values
from mtan.tasks import tasks_from_config

DEPTH_UNIT = 65535.0  # uint16 depth: value = p / 65535 (CityScapes release convention)
NORMAL_UNIT = 127.0  # int8 normals: component = q / 127


def _label_dtype(num_classes: int) -> torch.dtype:
    return torch.int8 if num_classes <= 127 else torch.int16


def bytes_per_frame(height: int, width: int, tasks, normal_dtype: torch.dtype = torch.int8) -> int:
    """Bytes one frame takes in memory: 3 (uint8 RGB) + per task (1-2 labels, 2 depth, 3 or 6 normals)."""
    per_pixel = 3 + sum(storage_for(t, normal_dtype).bytes_per_pixel for t in tasks_from_config(tasks))
    return per_pixel * height * width


# --------------------------------------------------------------------------------------
# Encoding and decoding (batched: B x C x H x W tensors)
# --------------------------------------------------------------------------------------


def encode_image(image: torch.Tensor) -> torch.Tensor:
    return (image * 255).round_().clamp_(0, 255).to(torch.uint8)


def decode_image(stored: torch.Tensor) -> torch.Tensor:
    return stored.float().div_(255)


def encode_depth_codes(depth: torch.Tensor) -> torch.Tensor | None:
    """16-bit codes ``p`` (in int16) with ``p / 65535`` equal to ``depth`` bit for bit, else ``None``."""
    p = (depth.double() * DEPTH_UNIT).round_()
    if p.numel() and (p.min() < 0 or p.max() > DEPTH_UNIT):
        return None
    p = p.to(torch.int32)
    codes = torch.where(p > 32767, p - 65536, p).to(torch.int16)  # same 16 bits as uint16 p
    if not torch.equal(decode_depth(codes), depth.float()):
        return None
    return codes


def decode_depth(stored: torch.Tensor) -> torch.Tensor:
    """int16 tensors hold 16-bit codes p (value p / 65535); float16 tensors hold the value."""
    if stored.dtype == torch.int16:
        return (stored.to(torch.int32) & 0xFFFF).float().div_(DEPTH_UNIT)
    return stored.float()


def encode_normal(normal: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.int8:
        return (normal * NORMAL_UNIT).round_().clamp_(-127, 127).to(torch.int8)
    return normal.to(dtype)


def decode_normal(stored: torch.Tensor) -> torch.Tensor:
    if stored.dtype == torch.int8:  # re-normalise; all-zero (invalid) vectors stay zero
        return F.normalize(stored.float(), dim=1, eps=1e-6)
    return stored.float()


class LabelStorage:
    """Class ids as int8 (int16 beyond 127 classes): N x H x W."""

    def __init__(self, task, normal_dtype: torch.dtype = torch.int8):
        self.dtype = _label_dtype(task.num_classes)
        self.bytes_per_pixel = self.dtype.itemsize

    def empty(self, n: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(n, h, w, dtype=self.dtype)

    def write(self, store: torch.Tensor, start: int, end: int, value: torch.Tensor) -> torch.Tensor:
        store[start:end] = value.to(store.dtype)
        return store

    @staticmethod
    def read(stored: torch.Tensor) -> torch.Tensor:
        return stored.long()

    @staticmethod
    def describe(dtype: torch.dtype) -> str:
        return str(dtype).replace("torch.", "")


class DepthStorage:
    """Depth as 16-bit codes p (value p / 65535) while every value is one exactly, else float16: N x 1 x H x W."""

    bytes_per_pixel = 2

    def __init__(self, task=None, normal_dtype: torch.dtype = torch.int8):
        pass

    @staticmethod
    def empty(n: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(n, 1, h, w, dtype=torch.int16)

    @staticmethod
    def write(store: torch.Tensor, start: int, end: int, depth: torch.Tensor) -> torch.Tensor:
        """Write depth rows; on the first value that 16-bit codes cannot hold exactly, switch to float16."""
        if store.dtype == torch.int16:
            p = encode_depth_codes(depth)
            if p is not None:
                store[start:end] = p
                return store
            store = decode_depth(store).half()  # rows [0, start) were exact: convert them
        store[start:end] = depth.half()
        return store

    read = staticmethod(decode_depth)

    @staticmethod
    def describe(dtype: torch.dtype) -> str:
        return "uint16 p/65535" if dtype == torch.int16 else str(dtype).replace("torch.", "")


class NormalStorage:
    """Unit normals as int8 (x * 127) or ``normal_dtype``: N x 3 x H x W."""

    def __init__(self, task=None, normal_dtype: torch.dtype = torch.int8):
        self.dtype = normal_dtype
        self.bytes_per_pixel = 3 * normal_dtype.itemsize

    def empty(self, n: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(n, 3, h, w, dtype=self.dtype)

    def write(self, store: torch.Tensor, start: int, end: int, value: torch.Tensor) -> torch.Tensor:
        store[start:end] = encode_normal(value, store.dtype)
        return store

    read = staticmethod(decode_normal)
    describe = LabelStorage.describe


STORAGE = {"semantic": LabelStorage, "depth": DepthStorage, "normal": NormalStorage}


def storage_for(task, normal_dtype: torch.dtype = torch.int8):
    """How the targets of ``task`` are kept in memory."""
    return STORAGE[task.kind](task, normal_dtype)


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


class InMemoryDataset(torch.utils.data.Dataset):
    """A dataset held as compact resident tensors, with a fast batch iterator.

    Build one with :meth:`from_dataset`; move it with :meth:`to`; iterate with
    :meth:`iter_batches`. It is also an ordinary ``Dataset`` (items decoded to the usual
    float sample dicts), and can be saved / loaded with :meth:`save` / :meth:`load`.
    """

    def __init__(self, images: torch.Tensor, targets: dict[str, torch.Tensor], task_configs: list[dict],
                 name: str = "in-memory"):
        self.images = images
        self.targets = dict(targets)
        self.task_configs = [dict(t) for t in task_configs]
        self.tasks = tasks_from_config(self.task_configs)
        self.storages = {t.name: storage_for(t) for t in self.tasks}
        self.name = name
        self.size = tuple(images.shape[-2:])
        missing = [t.name for t in self.tasks if t.name not in self.targets]
        if missing:
            raise ValueError(f"in-memory dataset: no stored target for task(s) {missing}")

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_dataset(cls, dataset, workers: int = 0, batch_size: int = 32, progress: bool = True,
                     normal_dtype: torch.dtype = torch.int8, device="cpu") -> "InMemoryDataset":
        """Load every item of ``dataset`` once and store it compactly on ``device``.

        ``workers`` > 0 reads files in DataLoader worker processes. Depth is stored as 16-bit
        codes while every value seen is exactly ``p / 65535``, and switches to float16 otherwise.
        """
        tasks = tasks_from_config(dataset.task_configs)
        n = len(dataset)
        h, w = getattr(dataset, "size", None) or dataset[0]["image"].shape[-2:]
        images = torch.empty(n, 3, h, w, dtype=torch.uint8)
        storages = {t.name: storage_for(t, normal_dtype) for t in tasks}
        targets = {name: storage.empty(n, h, w) for name, storage in storages.items()}
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
        start = 0
        for batch in tqdm(loader, desc=f"loading {getattr(dataset, 'name', 'dataset')} into memory",
                          unit="batch", disable=not progress):
            end = start + batch["image"].shape[0]
            images[start:end] = encode_image(batch["image"])
            for name, storage in storages.items():
                targets[name] = storage.write(targets[name], start, end, batch[name])
            start = end
        memory = cls(images, targets, dataset.task_configs, getattr(dataset, "name", "in-memory"))
        return memory.to(device)

    # -- storage ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return self.images.nbytes + sum(t.nbytes for t in self.targets.values())

    def storage_dtypes(self) -> dict[str, torch.dtype]:
        """The dtype of each stored tensor (int16 depth = 16-bit codes p, value p / 65535)."""
        return {"image": self.images.dtype, **{k: v.dtype for k, v in self.targets.items()}}

    def storage_formats(self) -> dict[str, str]:
        """Readable storage format of each field, e.g. ``{"depth": "uint16 p/65535"}``."""
        return {k: (self.storages[k].describe(d) if k in self.storages else LabelStorage.describe(d))
                for k, d in self.storage_dtypes().items()}

    def to(self, device) -> "InMemoryDataset":
        """Move the stored tensors (e.g. to ``"cuda"``); returns ``self``."""
        self.images = self.images.to(device)
        self.targets = {k: v.to(device) for k, v in self.targets.items()}
        return self

    def save(self, path) -> None:
        """Write the stored tensors to a safetensors file (task configs and name in its header)."""
        tensors = {"images": self.images.cpu().contiguous(),
                   **{f"targets.{k}": v.cpu().contiguous() for k, v in self.targets.items()}}
        save_file(tensors, str(path), metadata={"task_configs": json.dumps(self.task_configs), "name": self.name})

    @classmethod
    def load(cls, path, device="cpu") -> "InMemoryDataset":
        """Read a file written by :meth:`save` (safetensors: no pickle, no code execution)."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        targets = {k[len("targets."):]: v for k, v in tensors.items() if k.startswith("targets.")}
        return cls(tensors["images"], targets, json.loads(meta["task_configs"]), meta.get("name", "in-memory")).to(device)

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor) -> dict:
        """Decode the frames at ``index`` (a 1-D index tensor on the storage device) to a float batch."""
        out = {"image": decode_image(self.images.index_select(0, index))}
        for task in self.tasks:
            out[task.name] = self.storages[task.name].read(self.targets[task.name].index_select(0, index))
        return out

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range (0..{len(self) - 1})")
        batch = self.batch(torch.tensor([index % len(self)], device=self.device))
        return {k: v[0] for k, v in batch.items()}

    def check_item(self, index: int) -> None:
        check_sample_values(self[index], self.tasks, lambda key: f"{self.name} (in memory) frame {index}, {key}")

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        if drop_last and len(self) >= batch_size:
            return len(self) // batch_size
        return math.ceil(len(self) / batch_size)

    def iter_batches(self, batch_size: int, shuffle: bool = True, generator: torch.Generator | None = None,
                     augment: bool | Callable[[dict], dict] = False, drop_last: bool = False) -> Iterator[dict]:
        """Yield float batches on the storage device.

        ``shuffle`` draws a permutation with ``generator`` (any device); ``augment``: ``True``
        for :class:`~mtan.data.augment.BatchAugment` with the default recipe, or any callable
        taking and returning a batch. With a CPU generator and GPU storage, one seed is taken
        from the generator per epoch to drive a device generator, so batches need no host sync.
        """
        device = self.device
        if shuffle:
            gen_device = generator.device if generator is not None else device
            order = torch.randperm(len(self), generator=generator, device=gen_device).to(device)
        else:
            order = torch.arange(len(self), device=device)
        yield from self.batches(order, batch_size, drop_last, self._augmenter(augment, generator))

    def batches(self, order: torch.Tensor, batch_size: int, drop_last: bool = False,
                transform: Callable[[dict], dict] | None = None) -> Iterator[dict]:
        """The batching loop of the project (training, validation, scoring): float batches of the
        frames at ``order`` (a 1-D index tensor on the storage device), ``batch_size`` at a time,
        each passed through ``transform``. ``drop_last``: a last batch smaller than the others is
        left out (BatchNorm dislikes tiny batches), unless it is the only one."""
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            if drop_last and len(index) < batch_size and len(order) >= batch_size:
                break
            batch = self.batch(index)
            yield transform(batch) if transform else batch

    def _augmenter(self, augment, generator: torch.Generator | None):
        if not augment:
            return None
        if callable(augment):
            return augment
        if generator is not None and generator.device != self.device:
            seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).cpu())
            generator = torch.Generator(device=self.device).manual_seed(seed)
        return BatchAugment(self.tasks, generator=generator)

    def __repr__(self) -> str:
        dtypes = ", ".join(f"{k}: {v}" for k, v in self.storage_formats().items())
        return (f"InMemoryDataset(name={self.name!r}, frames={len(self)}, size={self.size}, device={self.device}, "
                f"{self.nbytes / 2**20:.1f} MiB; {dtypes})")


def to_memory(dataset, device="cpu", workers: int = 0, progress: bool = True, **options) -> InMemoryDataset:
    """Shorthand for :meth:`InMemoryDataset.from_dataset`."""
    return InMemoryDataset.from_dataset(dataset, workers=workers, progress=progress, device=device, **options)


def measure_throughput(dataset: InMemoryDataset, batch_size: int = 8, augment: bool = True,
                       seconds: float = 3.0) -> float:
    """Images per second of ``iter_batches`` (synchronising the device at the end)."""
    generator = torch.Generator(device=dataset.device).manual_seed(0)
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for batch in dataset.iter_batches(batch_size, shuffle=True, generator=generator, augment=augment,
                                          drop_last=True):
            images += batch["image"].shape[0]
            if time.perf_counter() - t0 > seconds:
                break
    if dataset.device.type == "cuda":
        torch.cuda.synchronize(dataset.device)
    return images / (time.perf_counter() - t0)


__all__ = ["InMemoryDataset", "to_memory", "bytes_per_frame", "measure_throughput"]
