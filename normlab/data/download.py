"""Checksummed downloads of the public datasets (used only when the files are not on disk and a network answers)."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Callable

from .readers import DataError

# name -> list of (file name, [mirror urls], sha256 or None, md5). md5s are the ones torchvision/the authors publish;
# a download must match every checksum given.
_MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "https://storage.googleapis.com/cvdf-datasets/mnist/"]
_FASHION_MIRRORS = ["https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
FILES: dict[str, list[tuple[str, list[str], str | None, str]]] = {
    "mnist": [
        ("train-images-idx3-ubyte.gz", _MNIST_MIRRORS,
         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", _MNIST_MIRRORS,
         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", _MNIST_MIRRORS,
         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", _MNIST_MIRRORS,
         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion-mnist": [
        ("train-images-idx3-ubyte.gz", _FASHION_MIRRORS, None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", _FASHION_MIRRORS, None, "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", _FASHION_MIRRORS, None, "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", _FASHION_MIRRORS, None, "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    "cifar10": [
        ("cifar-10-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/"],
         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "c58f30108f718f92721af3b95e74349a"),
    ],
}

Opener = Callable[..., object]


def file_digests(path: str | Path) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, read in 1 MiB chunks."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def verify(path: str | Path, sha256: str | None, md5: str | None, shown: str | None = None) -> None:
    """Raise DataError naming the file (or `shown`) when a given checksum does not match."""
    got_sha, got_md5 = file_digests(path)
    name = shown or str(path)
    if sha256 and got_sha != sha256:
        raise DataError(f"{name}: sha256 {got_sha} does not match the expected {sha256}")
    if md5 and got_md5 != md5:
        raise DataError(f"{name}: md5 {got_md5} does not match the expected {md5}")


def make_folder(folder: Path) -> None:
    """mkdir -p, with a DataError naming the folder when it cannot be made (a file in the way, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the data folder ({e.strerror or e}); the data dir (--data, "
                        f"NORMLAB_DATA or ~/.cache/normlab) must be a writable folder, not a file") from None


def fetch(urls: list[str], dest: str | Path, sha256: str | None, md5: str | None,
          opener: Opener | None = None, timeout: float = 30.0) -> Path:
    """Download the first mirror that answers to `dest` (atomically: temp file, verify, rename).

    opener(url, timeout=...) returns a file-like response; it defaults to urllib.request.urlopen and is a parameter
    so the tests can serve local files.
    """
    opener = opener or urllib.request.urlopen
    dest = Path(dest)
    make_folder(dest.parent)
    errors = []
    for url in urls:
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        try:
            with opener(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
            verify(tmp, sha256, md5, shown=f"{dest.name} from {url}")
            os.replace(tmp, dest)
            return dest
        except (OSError, DataError, ValueError) as e:
            errors.append(str(e) if isinstance(e, DataError) else f"{url}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DataError(f"could not download {dest.name}: " + "; ".join(errors))


def download(name: str, folder: str | Path, opener: Opener | None = None, base_urls: list[str] | None = None) -> list[Path]:
    """Fetch every file of dataset `name` into `folder` (skipping ones already there with good checksums)."""
    if name not in FILES:
        raise ValueError(f"name: no download known for {name!r}; known: {', '.join(FILES)}")
    out = []
    for fname, mirrors, sha256, md5 in FILES[name]:
        dest = Path(folder) / fname
        if dest.is_file():
            verify(dest, sha256, md5, shown=f"{dest} (delete it to download again)")
        else:
            fetch([u + fname for u in (base_urls or mirrors)], dest, sha256, md5, opener=opener)
        out.append(dest)
    return out
