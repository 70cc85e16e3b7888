"""File readers: MNIST-style npz and IDX (LeCun's format), CIFAR-10 python pickles and binary batches, safe tar.

Every reader returns uint8 NumPy arrays and raises DataError naming the file when it is corrupt or truncated.
"""
from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file is missing, corrupt or truncated; the message names the file and how to get it."""


MAX_BYTES = 1 << 30   # no normlab dataset file holds more than 1 GiB once decompressed (CIFAR-10: 184 MB in all)


def _read_bytes(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes (gunzipped for .gz), reading at most `limit` + 1 bytes: a gzip bomb is refused after
    `limit` bytes, not after all of them."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or truncated, "
                        f"delete it and fetch it again") from e
    if len(data) > limit:
        raise DataError(f"{path}: holds more than {limit:,} bytes{' once decompressed' if path.suffix == '.gz' else ''}"
                        f", more than any dataset file normlab reads; refusing it (a damaged file or a gzip bomb)")
    return data


# IDX: big-endian magic (0, 0, dtype code, ndim), ndim uint32 sizes, then the data.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally .gz) into an array of its own shape, e.g. (60000, 28, 28) uint8.

    The header is read first and then exactly the bytes it announces (+1 to detect extra data), so a file whose
    content does not match its header is refused without decompressing more than the header promised."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
                raise DataError(f"{path}: not an IDX file (bad magic number {magic.hex()})")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[magic[2]])
            want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if want > MAX_BYTES:
                raise DataError(f"{path}: header says shape {shape} ({want:,} bytes), more than the {MAX_BYTES:,} "
                                f"normlab reads from one file; the header is corrupt")
            raw = f.read(want + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is corrupt or truncated, "
                        f"delete it and fetch it again") from e
    if len(raw) != want:
        raise DataError(f"{path}: truncated or corrupt IDX file: header says shape {shape} ({want} bytes), "
                        f"found {'more' if len(raw) > want else len(raw)} bytes of data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz); used by the tests and for caching."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = head + array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


IDX_NAMES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def find_idx(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in `folder` (gzipped or not), or None when any is missing."""
    found = {}
    for key, stem in IDX_NAMES.items():
        for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def read_idx_set(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """x_train (N, 28, 28), y_train (N,), x_test, y_test from the four IDX files; checks that counts agree."""
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{files[f'x_{split}']}: {split} images {x.shape} and labels {y.shape} do not match")
    return check_arrays(arrays, files["x_train"].parent)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """mnist.npz with keys x_train, y_train, x_test, y_test (uint8), as in shared/data/README.md."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise DataError(f"{path}: missing key {e}; expected x_train, y_train, x_test, y_test") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is corrupt or truncated") from e
    return check_arrays(arrays, path)


# -- validation of loaded arrays -----------------------------------------------------------------------------------
def _layout(x: np.ndarray, where: str) -> np.ndarray:
    """Images as (N, H, W) or (N, C, H, W) with C in (1, 3); (N, H, W, C) is recognized and transposed."""
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):   # channels last (Keras/TensorFlow layout)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 2:
        side = int(round(x.shape[1] ** 0.5))
        fix = f"np.reshape(x, (-1, {side}, {side}))" if side * side == x.shape[1] else "reshape them to (N, H, W)"
        raise DataError(f"{where}: shape {x.shape} holds flat vectors, expected images (N, H, W) or (N, C, H, W); "
                        f"save them as images: {fix}")
    raise DataError(f"{where}: shape {x.shape} is not an image layout; expected (N, H, W), (N, C, H, W) or "
                    f"(N, H, W, C) with C = 1 or 3")


def _pixels(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 pixels 0..255; integer arrays within that range are cast, anything else is refused."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{where}: {int((~np.isfinite(x)).sum())} pixel(s) are NaN or infinite; expected uint8 "
                        f"pixels 0..255")
    lo, hi = (x.min(), x.max()) if x.size else (0, 0)
    if np.issubdtype(x.dtype, np.integer) and lo >= 0 and hi <= 255:
        return x.astype(np.uint8)
    fix = " (values in [0, 1]: save np.round(x * 255).astype(np.uint8))" if hi <= 1.0 else ""
    raise DataError(f"{where}: expected uint8 pixels 0..255, got {x.dtype} with values in [{lo}, {hi}]{fix}")


def _labels(y: np.ndarray, n: int, num_classes: int, where: str) -> np.ndarray:
    """Class indices (N,) in 0..num_classes-1; (N, 1) is flattened; integral floats are cast, others refused."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels of shape {y.shape}, expected class indices of shape (N,) (one-hot labels: "
                        f"save y.argmax(1))")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} images")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError(f"{where}: float labels that are not whole numbers (e.g. {y[y != np.round(y)][:1]}); "
                            f"expected class indices 0..{num_classes - 1}")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels of dtype {y.dtype}, expected integer class indices")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels in [{y.min()}, {y.max()}], expected class indices 0..{num_classes - 1}")
    return y.astype(np.uint8) if num_classes <= 256 else y


def check_arrays(arrays: dict[str, np.ndarray], source: str | Path, num_classes: int = 10) -> dict[str, np.ndarray]:
    """Validate (and normalize the layout of) x_train, y_train, x_test, y_test read from `source`.

    Returns uint8 images (N, H, W) or (N, C, H, W) and labels (N,); raises DataError naming the file, the array and
    the fix for: a layout that is not images (flat vectors, odd ranks), channels-last kept as is (transposed),
    non-uint8 or out-of-range pixels, non-finite pixels, an empty split, a train split whose channels are constant
    (normalization would divide by a zero std and training would report a NaN as divergence), train and test
    images of different shapes, and labels of the wrong shape, dtype or range."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"{source} (x_{split})"
        if len(x) == 0:
            raise DataError(f"{where}: no images")
        x = _pixels(_layout(np.asarray(x), where), where)
        out[f"x_{split}"] = x
        out[f"y_{split}"] = _labels(np.asarray(y), len(x), num_classes, f"{source} (y_{split})")
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(f"{source}: train images are {out['x_train'].shape[1:]} but test images are "
                        f"{out['x_test'].shape[1:]}; both splits must have one image shape")
    x = out["x_train"] if out["x_train"].ndim == 4 else out["x_train"][:, None]
    for c in range(x.shape[1]):
        lo, hi = x[:, c].min(), x[:, c].max()
        if lo == hi:
            raise DataError(f"{source} (x_train): every pixel{f' of channel {c}' if x.shape[1] > 1 else ''} is "
                            f"{lo}; constant images carry nothing to learn and cannot be normalized (std 0)")
    return out


# -- CIFAR-10 ------------------------------------------------------------------------------------------------------
CIFAR_PY_DIR = "cifar-10-batches-py"
CIFAR_BIN_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickled dicts of bytes, lists and NumPy arrays; refuse anything else (no code execution)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}   # encode: protocol-2 bytes

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One python-format batch -> images (N, 3, 32, 32) uint8, labels (N,) uint8."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"] if b"data" in d else d["data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"] if b"labels" in d else d["labels"], dtype=np.uint8)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        f"the file is corrupt or truncated") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary-format batch: records of 1 label byte + 3072 pixel bytes."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % 3073:
        raise DataError(f"{path}: size {len(raw)} is not a multiple of 3073 bytes; the file is truncated or corrupt")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), rec[:, 0].copy()


def read_cifar_dir(folder: Path) -> dict[str, np.ndarray] | None:
    """The CIFAR-10 batches under `folder` (either format), or None when not there."""
    py, bn = folder / CIFAR_PY_DIR, folder / CIFAR_BIN_DIR
    if all((py / n).is_file() for n in CIFAR_TRAIN + CIFAR_TEST):
        reader, names = read_cifar_pickle, (CIFAR_TRAIN, CIFAR_TEST)
        base = py
    elif all((bn / (n + ".bin")).is_file() for n in CIFAR_TRAIN + CIFAR_TEST):
        reader, names = read_cifar_bin, ([n + ".bin" for n in CIFAR_TRAIN], [n + ".bin" for n in CIFAR_TEST])
        base = bn
    else:
        return None
    out = {}
    for split, files in zip(("train", "test"), names):
        parts = [reader(base / n) for n in files]
        out[f"x_{split}"] = np.concatenate([p[0] for p in parts])
        out[f"y_{split}"] = np.concatenate([p[1] for p in parts])
    return check_arrays(out, base)


def safe_extract(archive: str | Path, target: str | Path) -> None:
    """Extract a tar archive into `target`, refusing members that would land outside it (absolute paths, '..',
    links pointing out) and anything that is not a regular file or directory."""
    archive, target = Path(archive), Path(target).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                dest = (target / m.name).resolve()
                if os.path.isabs(m.name) or (dest != target and target not in dest.parents):
                    raise DataError(f"{archive}: member {m.name!r} would extract outside {target}; refusing")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: member {m.name!r} is a link or special file; refusing")
            target.mkdir(parents=True, exist_ok=True)
            for m in members:
                tar.extract(m, target, filter="data") if hasattr(tarfile, "data_filter") else tar.extract(m, target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{archive}: cannot extract ({e}); the archive is corrupt or truncated") from e

