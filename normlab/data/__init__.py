"""Datasets in memory: `load(name, root=None, seed=0) -> Dataset` (float32 tensors normalized per channel).

Names: "mnist", "fashion-mnist", "cifar10" (read from the data dir, downloaded with checksums when missing and a
network answers) and "synthetic-linear" (SPEC §2 deep-linear-net data: x ~ N(0, I_10), y = A x with A a 10x10
Gaussian, 1000 samples). The data dir is `root`, else $NORMLAB_DATA, else ~/.cache/normlab ($XDG_CACHE_HOME
respected). Full MNIST is carried by the package (normlab/data/mnist.npz) and read when the data dir has none, so
every install has it offline. `identity(name)` names the files `load` would read, with their sha256.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..registry import Registry
from . import download as _download
from .readers import CIFAR_BIN_DIR, CIFAR_PY_DIR, DataError, find_idx, read_cifar_dir, read_idx_set, read_npz, safe_extract

__all__ = ["Dataset", "DataError", "DATASETS", "load", "identity", "names", "data_dir", "augment"]

# name -> loader(root: Path, seed, download) -> Dataset; each loader registers itself below
DATASETS = Registry("dataset")

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
# Full MNIST (LeCun, Cortes & Burges; CC BY-SA 3.0), carried by the repository so that a fresh clone works offline.
CARRIED_MNIST = Path(__file__).with_name("mnist.npz")
CARRIED_MNIST_SHA256 = "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"


@dataclass
class Dataset:
    """One dataset in memory. x_*: float32 (N, C, H, W) images normalized per channel with the train split's
    mean/std (or (N, 10) vectors for synthetic-linear); y_*: int64 labels (N,) or float32 targets (N, 10)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str                       # which files (or generator) the arrays came from
    num_classes: int                  # number of classes; for regression the number of target dims
    in_shape: tuple[int, ...]         # shape of one input, e.g. (1, 28, 28)
    task: str = "classification"      # or "regression" (synthetic-linear)
    mean: tuple[float, ...] = ()      # per-channel statistics used to normalize (on the [0, 1] pixel scale)
    std: tuple[float, ...] = ()
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"source={self.source!r})")

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy with the four tensors on `device` (this one is left as it is)."""
        return replace(self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")})


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The data directory: `root`, else $NORMLAB_DATA, else the user cache dir (~/.cache/normlab)."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("NORMLAB_DATA"):
        return Path(os.environ["NORMLAB_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "normlab"


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and (biased) std on the [0, 1] scale of uint8 images (N, C, H, W), from a 256-bin
    histogram per channel: no float copy of the data."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = np.zeros(256)
        for i in range(0, len(x), 4096):   # bincount casts to int64: chunks keep that copy small
            hist += np.bincount(x[i:i + 4096, c].reshape(-1), minlength=256)
        m = hist @ levels / hist.sum()
        mean.append(m)
        std.append(math.sqrt(hist @ (levels - m) ** 2 / hist.sum()))
    return np.array(mean), np.array(std)


def _images(arrays: dict[str, np.ndarray], name: str, source: str, num_classes: int = 10) -> Dataset:
    """uint8 arrays (N, H, W) or (N, C, H, W) -> float32 tensors (x / 255 - mean) / std per channel, statistics
    from the train split; converted in place to keep the peak memory near the size of the result."""
    raw = {s: arrays[f"x_{s}"] if arrays[f"x_{s}"].ndim == 4 else arrays[f"x_{s}"][:, None] for s in ("train", "test")}
    if raw["train"].dtype != np.uint8 or raw["test"].dtype != np.uint8:
        raise DataError(f"{source}: expected uint8 images, got {raw['train'].dtype} / {raw['test'].dtype}")
    mean, std = _channel_stats(raw["train"])
    shape = (1, -1, 1, 1)
    xs = {}
    for split, x in raw.items():
        t = torch.empty(x.shape, dtype=torch.float32)
        t.copy_(torch.from_numpy(np.ascontiguousarray(x)))
        xs[split] = t.div_(255.0).sub_(torch.tensor(mean, dtype=torch.float32).view(shape)).div_(
            torch.tensor(std, dtype=torch.float32).view(shape))
    ys = {s: torch.from_numpy(arrays[f"y_{s}"].astype(np.int64)) for s in ("train", "test")}
    for s, y in ys.items():
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{source}: {s} labels outside 0..{num_classes - 1}")
    return Dataset(name, xs["train"], ys["train"], xs["test"], ys["test"], source, num_classes,
                   tuple(xs["train"].shape[1:]), mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def _missing(name: str, places: list[Path], how: str) -> DataError:
    where = ", ".join(str(p) for p in places)
    return DataError(f"dataset {name!r} not found (looked in {where}) and could not be downloaded. {how}")


def _places(name: str, root: Path) -> list[Path]:
    """Where `name` may lie, in the order they are tried: the data dir, Debian's Fashion-MNIST, the carried MNIST."""
    sub = root / name
    places = [root / f"{name}.npz", root, sub] if name == "mnist" else [root / f"{name}.npz", sub]
    if name == "fashion-mnist":
        places.append(FASHION_SYSTEM_DIR)
    if name == "mnist":
        places.append(CARRIED_MNIST)
    return places


def _locate(name: str, root: Path) -> tuple[str, list[Path]] | None:
    """("npz", [file]) or ("idx", [4 files]) for the first place that holds `name`, else None."""
    for place in _places(name, root):
        if place.suffix == ".npz":
            if place.is_file():
                return "npz", [place]
            continue
        files = find_idx(place) if place.is_dir() else None
        if files:
            return "idx", [files[k] for k in sorted(files)]
    return None


@DATASETS.register("mnist")
def _load_mnist(root: Path, seed: int, download: bool) -> Dataset:
    return _load_mnist_like("mnist", root, download)


@DATASETS.register("fashion-mnist")
def _load_fashion_mnist(root: Path, seed: int, download: bool) -> Dataset:
    return _load_mnist_like("fashion-mnist", root, download)


def _load_mnist_like(name: str, root: Path, download: bool) -> Dataset:
    found = _locate(name, root)
    if found and found[0] == "npz":
        place = found[1][0]
        what = " (the copy carried by normlab)" if place == CARRIED_MNIST else ""
        return _images(read_npz(place), name, f"{place}{what}")
    if found:
        place = found[1][0].parent
        return _images(read_idx_set(find_idx(place)), name, f"IDX files in {place}")
    sub, error = root / name, None
    if download:
        try:
            _download.download(name, sub)
            return _images(read_idx_set(find_idx(sub)), name, f"IDX files in {sub} (downloaded, checksums verified)")
        except DataError as e:
            error = e
    how = (f"Put {name}.npz (keys x_train, y_train, x_test, y_test) or the four IDX .gz files into {sub}, "
           f"or set NORMLAB_DATA to a folder that has them")
    if name == "fashion-mnist":
        how += ", or run `apt-get install dataset-fashion-mnist`"
    raise _missing(name, _places(name, root), how + (f" (download failed: {error})" if error else "")) from error


@DATASETS.register("cifar10")
def _load_cifar10(root: Path, seed: int, download: bool) -> Dataset:
    places = [root, root / "cifar10"]
    for place in places:
        arrays = read_cifar_dir(place) if place.is_dir() else None
        if arrays:
            return _images(arrays, "cifar10", f"CIFAR-10 batches in {place}")
    tarball = root / "cifar10" / "cifar-10-python.tar.gz"
    error = None
    try:
        if not tarball.is_file() and download:
            _download.download("cifar10", tarball.parent)
        if tarball.is_file():
            _download.verify(tarball, *_download.FILES["cifar10"][0][2:])
            safe_extract(tarball, root / "cifar10")
            arrays = read_cifar_dir(root / "cifar10")
            if arrays:
                return _images(arrays, "cifar10", f"CIFAR-10 batches in {root / 'cifar10'} (from {tarball.name})")
    except DataError as e:
        error = e
    raise _missing("cifar10", places, f"Put cifar-10-batches-py/ (or -bin/) or cifar-10-python.tar.gz under "
                   f"{root / 'cifar10'}" + (f" ({error})" if error else "")) from error


@DATASETS.register("synthetic-linear")
def _load_synthetic_linear(root: Path | None, seed: int, download: bool = False, n: int = 1000,
                           d: int = 10) -> Dataset:
    """SPEC §2 deep-linear-net data: x_i ~ N(0, I_d), A_jk ~ N(0, 1), y_i = A x_i; n train and n test samples."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g)
    x_train, x_test = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    return Dataset("synthetic-linear", x_train, x_train @ a.T, x_test, x_test @ a.T,
                   f"synthetic: x ~ N(0, I_{d}), y = A x, A ~ N(0, 1)^{d}x{d}, seed {seed}", d, (d,),
                   task="regression", extra={"A": a})


def names() -> list[str]:
    return DATASETS.names()


def _known(name: str) -> str:
    """name, lower-cased, when it is a registered dataset; ValueError naming the valid ones otherwise."""
    DATASETS.get(name.lower() if isinstance(name, str) else name, "name")   # raises for an unknown name
    return name.lower()


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity(name: str, root: str | os.PathLike | None = None) -> dict:
    """What `load(name, root)` would read, without reading it into memory: {"dataset", "files": [{"name", "bytes",
    "sha256"}]} for file-backed data (hashes cached per path, size and mtime), the generator's description for
    synthetic-linear, or {"dataset", "missing": True} when nothing is on disk. Runs key their cache on it, so a
    changed dataset never reuses old runs."""
    name = _known(name)
    if name == "synthetic-linear":
        return {"dataset": name, "generator": "x ~ N(0, I_10), y = A x, A ~ N(0, 1), n = 1000 (seeded)"}
    root = data_dir(root)
    if name == "cifar10":
        dirs = [d / sub for d in (root, root / "cifar10") for sub in (CIFAR_PY_DIR, CIFAR_BIN_DIR)]
        found = next((("dir", sorted(p for p in d.iterdir() if p.is_file())) for d in dirs if d.is_dir()), None)
    else:
        found = _locate(name, root)
    if not found:
        return {"dataset": name, "missing": True}
    files = []
    for p in found[1]:
        st = p.stat()
        files.append({"name": p.name, "bytes": st.st_size, "sha256": _sha256(str(p.resolve()), st.st_size,
                                                                           st.st_mtime_ns)})
    return {"dataset": name, "files": files}


def load(name: str, root: str | os.PathLike | None = None, seed: int = 0, download: bool = True) -> Dataset:
    """Load dataset `name` into memory (see the module docstring); `seed` only affects synthetic-linear."""
    name = _known(name)
    if name == "synthetic-linear":
        return _load_synthetic_linear(None, seed)
    root = data_dir(root)
    if root.exists() and not root.is_dir():   # a mistyped NORMLAB_DATA must not fall through to the carried copy
        raise DataError(f"{root}: cannot create the data folder (a file is in the way); the data dir (--data, "
                        f"NORMLAB_DATA or ~/.cache/normlab) must be a writable folder, not a file")
    return DATASETS.get(name)(root, seed, download)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, flip: bool = True,
            crop: int = 4) -> torch.Tensor:
    """Random horizontal flips and random crops with `crop` pixels of zero padding, per sample (train only).
    x: (N, C, H, W) -> same shape, new tensor."""
    n, _, h, w = x.shape
    dev = x.device
    if flip:
        mask = torch.rand(n, generator=generator, device="cpu").to(dev) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    if crop:
        padded = torch.nn.functional.pad(x, (crop, crop, crop, crop))
        off = torch.randint(0, 2 * crop + 1, (2, n), generator=generator, device="cpu").to(dev)
        rows = (off[0].view(n, 1) + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (off[1].view(n, 1) + torch.arange(w, device=dev)).view(n, 1, 1, w)
        c = x.shape[1]
        idx_n = torch.arange(n, device=dev).view(n, 1, 1, 1)
        idx_c = torch.arange(c, device=dev).view(1, c, 1, 1)
        x = padded[idx_n, idx_c, rows, cols]
    return x
