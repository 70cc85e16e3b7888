"""normlab.data: readers (npz, IDX, CIFAR-10 pickle/binary), checksummed download, safe tar, splits and stats."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab import data
from normlab.data import DataError
from normlab.data import download as dl
from normlab.data.readers import read_cifar_bin, read_idx, safe_extract, write_idx

SHARED_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"


def fake_mnist_arrays(n_train=50, n_test=20, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}


def write_idx_set(folder: Path, arrays: dict, gz: bool = True) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    out = {}
    for k, stem in names.items():
        out[k] = folder / (stem + (".gz" if gz else ""))
        write_idx(out[k], arrays[k])
    return out


def unnormalize(ds: data.Dataset, x: torch.Tensor) -> np.ndarray:
    """Back to uint8 pixels: x * std + mean on the [0, 1] scale, times 255."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8).numpy()


# -- MNIST-format sources ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="shared/data/mnist.npz not present")
def test_real_mnist_npz():
    ds = data.load("mnist", root=SHARED_NPZ.parent)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.mean[0] == pytest.approx(0.13066, abs=1e-5) and ds.std[0] == pytest.approx(0.30811, abs=1e-5)
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(ds.x_train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(ds.x_train.std()) == pytest.approx(1.0, abs=1e-4)
    # test split normalized with the train statistics: README's test mean 0.13251 -> (0.13251 - 0.13066) / 0.30811
    assert float(ds.x_test.mean()) == pytest.approx((0.13251 - 0.13066) / 0.30811, abs=1e-4)
    assert ds.source == str(SHARED_NPZ) and ds.num_classes == 10 and ds.in_shape == (1, 28, 28)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_roundtrip(tmp_path, gz):
    arrays = fake_mnist_arrays()
    write_idx_set(tmp_path / "mnist", arrays, gz=gz)
    ds = data.load("mnist", root=tmp_path, download=False)
    assert "IDX files in" in ds.source and str(tmp_path / "mnist") in ds.source
    np.testing.assert_array_equal(unnormalize(ds, ds.x_train)[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(unnormalize(ds, ds.x_test)[:, 0], arrays["x_test"])
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    pix = arrays["x_train"].astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(pix.mean(), rel=1e-6) and ds.std[0] == pytest.approx(pix.std(), rel=1e-6)


def test_npz_preferred_and_env_var(tmp_path, monkeypatch):
    arrays = fake_mnist_arrays(seed=1)
    np.savez(tmp_path / "mnist.npz", **arrays)
    write_idx_set(tmp_path / "mnist", fake_mnist_arrays(seed=2))
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path))
    ds = data.load("mnist", download=False)
    assert ds.source == str(tmp_path / "mnist.npz")
    assert ds.y_test.tolist() == arrays["y_test"].tolist()


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "env"))
    assert data.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_dir() == tmp_path / "env"
    monkeypatch.delenv("NORMLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.data_dir() == tmp_path / "cache" / "normlab"


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    files = write_idx_set(tmp_path / "mnist", fake_mnist_arrays(), gz=False)
    p = files["x_train"]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{p}: truncated or corrupt IDX file"):
        data.load("mnist", root=tmp_path, download=False)
    p.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(DataError, match=f"{p}: not an IDX file"):
        read_idx(p)
    g = tmp_path / "x.gz"
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))[:-8])
    with pytest.raises(DataError, match=f"{g}: cannot read"):
        read_idx(g)
    bad = tmp_path / "bad" / "mnist.npz"
    bad.parent.mkdir()
    np.savez(bad, **fake_mnist_arrays())
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{bad}: cannot read"):
        data.load("mnist", root=bad.parent, download=False)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CARRIED_MNIST", tmp_path / "not-carried.npz")   # as an install without the copy
    with pytest.raises(DataError, match="dataset 'mnist' not found .*Put mnist.npz .* NORMLAB_DATA"):
        data.load("mnist", root=tmp_path, download=False)
    with pytest.raises(ValueError, match="name: unknown dataset 'svhn'; valid: mnist, fashion-mnist"):
        data.load("svhn")


@pytest.mark.skipif(not (data.FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian(tmp_path):
    ds = data.load("fashion-mnist", root=tmp_path, download=False)
    assert ds.source == f"IDX files in {data.FASHION_SYSTEM_DIR}"
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10 and torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y_train[:5].tolist() == [9, 0, 0, 3, 0]   # ankle boot, T-shirt, T-shirt, dress, T-shirt
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)


def test_fashion_mnist_from_data_dir(tmp_path):
    arrays = fake_mnist_arrays(seed=3)
    write_idx_set(tmp_path / "fashion-mnist", arrays)
    ds = data.load("fashion-mnist", root=tmp_path, download=False)
    assert ds.source == f"IDX files in {tmp_path / 'fashion-mnist'}"
    assert ds.y_train.tolist() == arrays["y_train"].tolist()


# -- downloads (local files only: the tests never touch the network) -----------------------------------------------
def _digests(b: bytes) -> tuple[str, str]:
    return hashlib.sha256(b).hexdigest(), hashlib.md5(b).hexdigest()


def test_fetch_verifies_checksums_and_falls_back(tmp_path):
    src = tmp_path / "src" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(b"normlab" * 1000)
    sha, md5 = _digests(src.read_bytes())
    dest = tmp_path / "dl" / "f.bin"
    got = dl.fetch([(tmp_path / "nowhere.bin").as_uri(), src.as_uri()], dest, sha, md5)
    assert got == dest and dest.read_bytes() == src.read_bytes()
    wrong = tmp_path / "dl" / "g.bin"
    with pytest.raises(DataError, match="could not download g.bin: .*sha256 .* does not match the expected"):
        dl.fetch([src.as_uri()], wrong, "0" * 64, None)
    assert not wrong.exists() and sorted(os.listdir(tmp_path / "dl")) == ["f.bin"]   # no partial files
    with pytest.raises(DataError, match="md5 .* does not match"):
        dl.fetch([src.as_uri()], wrong, None, "0" * 32)


def test_mnist_download_through_mirror(tmp_path, monkeypatch):
    arrays = fake_mnist_arrays(seed=4)
    files = write_idx_set(tmp_path / "mirror", arrays)
    table = [(p.name, [(tmp_path / "mirror").as_uri() + "/"], *_digests(p.read_bytes())) for p in files.values()]
    monkeypatch.setitem(dl.FILES, "mnist", table)
    monkeypatch.setattr(data, "CARRIED_MNIST", tmp_path / "not-carried.npz")   # else the carried copy is read
    calls = []
    real_urlopen = dl.urllib.request.urlopen

    def opener(url, timeout):
        calls.append(url)
        return real_urlopen(url, timeout=timeout)
    monkeypatch.setattr(dl.urllib.request, "urlopen", opener)
    root = tmp_path / "cache"
    ds = data.load("mnist", root=root)
    assert ds.source == f"IDX files in {root / 'mnist'} (downloaded, checksums verified)"
    assert len(calls) == 4 and ds.y_test.tolist() == arrays["y_test"].tolist()
    # a corrupted mirror file fails the checksum and the error names the file
    (tmp_path / "mirror" / files["y_test"].name).write_bytes(b"garbage")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: sha256"):
        data.load("mnist", root=tmp_path / "cache2")


def test_checksum_table_is_complete():
    for name, entries in dl.FILES.items():
        for fname, mirrors, sha, md5 in entries:
            assert mirrors and all(u.endswith("/") for u in mirrors), fname
            assert len(md5) == 32 and (sha is None or len(sha) == 64), fname
    assert len(dl.FILES["mnist"]) == 4 and len(dl.FILES["fashion-mnist"]) == 4


# -- CIFAR-10 in its own formats -----------------------------------------------------------------------------------
def cifar_batches(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def write_cifar_py(folder: Path) -> dict[str, np.ndarray]:
    """cifar-10-batches-py: pickled dicts {b'data': (N, 3072) uint8 row-major RGB planes, b'labels': [..]}."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = cifar_batches(4, i)
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"a.png"] * 4}, f,
                        protocol=2)
        xs.append(x)
        ys.append(y)
    return {"x_train": np.concatenate(xs[:5]).reshape(-1, 3, 32, 32), "y_train": np.concatenate(ys[:5]),
            "x_test": xs[5].reshape(-1, 3, 32, 32), "y_test": np.array(ys[5])}


def test_cifar10_python_format(tmp_path):
    arrays = write_cifar_py(tmp_path / "cifar10")
    ds = data.load("cifar10", root=tmp_path, download=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32) and ds.in_shape == (3, 32, 32)
    np.testing.assert_array_equal(unnormalize(ds, ds.x_train), arrays["x_train"])
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    pix = arrays["x_train"].astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, pix.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(ds.std, pix.std(axis=(0, 2, 3)), rtol=1e-6)


def test_cifar10_binary_format_and_truncation(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    recs = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = cifar_batches(3, 10 + i)
        recs[name] = (x, y)
        (d / f"{name}.bin").write_bytes(np.concatenate([np.array(y, np.uint8)[:, None], x], axis=1).tobytes())
    ds = data.load("cifar10", root=tmp_path, download=False)
    np.testing.assert_array_equal(unnormalize(ds, ds.x_test), recs["test_batch"][0].reshape(-1, 3, 32, 32))
    assert ds.y_test.tolist() == recs["test_batch"][1]
    p = d / "test_batch.bin"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{p}: size .* not a multiple of 3073"):
        read_cifar_bin(p)


def test_cifar10_corrupt_pickle_and_evil_pickle(tmp_path):
    write_cifar_py(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{p}: not a readable CIFAR-10 python batch"):
        data.load("cifar10", root=tmp_path, download=False)
    p.write_bytes(pickle.dumps(os.system))   # a pickle that would import a callable is refused, not run
    with pytest.raises(DataError, match="refusing to load"):
        data.load("cifar10", root=tmp_path, download=False)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_safe_extract_refuses_escaping_paths(tmp_path):
    for evil in ("../evil.txt", "/tmp/evil_abs.txt", "a/../../evil.txt"):
        arc = tmp_path / "evil.tar.gz"
        _tar(arc, {"ok.txt": b"1", evil: b"x"})
        with pytest.raises(DataError, match="would extract outside"):
            safe_extract(arc, tmp_path / "out")
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "ok.txt").exists()
    arc = tmp_path / "link.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="is a link or special file"):
        safe_extract(arc, tmp_path / "out2")
    arc.write_bytes(arc.read_bytes()[:20])
    with pytest.raises(DataError, match=f"{arc}: cannot extract"):
        safe_extract(arc, tmp_path / "out3")


def test_cifar10_download_and_extract(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar_py(src)
    arc = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    arc.parent.mkdir()
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(dl.FILES, "cifar10", [(arc.name, [arc.parent.as_uri() + "/"], *_digests(arc.read_bytes()))])
    ds = data.load("cifar10", root=tmp_path / "cache")
    assert ds.source == f"CIFAR-10 batches in {tmp_path / 'cache' / 'cifar10'} (from cifar-10-python.tar.gz)"
    assert ds.x_train.shape == (20, 3, 32, 32)


# -- embedded and synthetic ---------------------------------------------------------------------------------------
def test_carried_mnist_is_full_mnist(tmp_path):
    """A fresh clone with nothing beside it reads the full MNIST that the package carries (shared/data/README.md)."""
    ds = data.load("mnist", root=tmp_path / "empty", download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(ds.mean[0] - 0.13066) < 1e-5 and abs(ds.std[0] - 0.30811) < 1e-5
    assert "carried by normlab" in ds.source
    ident = data.identity("mnist", root=tmp_path / "empty")
    assert ident["files"] == [{"name": "mnist.npz", "bytes": 11_490_519, "sha256": data.CARRIED_MNIST_SHA256}]


def test_identity_follows_the_file_load_reads(tmp_path):
    """The run cache keys on identity(): another file (or a changed one) under the data dir gives another identity."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), "y_train": np.arange(20) % 10,
              "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), "y_test": np.arange(10) % 10}
    np.savez(tmp_path / "mnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    first = data.identity("mnist", root=tmp_path)
    assert first["files"][0]["bytes"] == (tmp_path / "mnist.npz").stat().st_size
    assert first["files"][0]["sha256"] != data.CARRIED_MNIST_SHA256
    assert data.load("mnist", root=tmp_path).x_train.shape == (20, 1, 28, 28)
    arrays["y_test"] = (arrays["y_test"] + 1) % 10
    np.savez(tmp_path / "mnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    os.utime(tmp_path / "mnist.npz", ns=(1, 1))   # a new mtime: the cached hash is not reused
    assert data.identity("mnist", root=tmp_path)["files"][0]["sha256"] != first["files"][0]["sha256"]
    assert data.identity("fashion-mnist", root=tmp_path / "none").get("missing") in (True, None)
    assert data.identity("synthetic-linear")["dataset"] == "synthetic-linear"
    with pytest.raises(ValueError, match="name: unknown dataset 'mnist-5k'"):
        data.identity("mnist-5k")


def test_synthetic_linear():
    ds = data.load("synthetic-linear", seed=3)
    a = ds.extra["A"]
    assert ds.x_train.shape == (1000, 10) and ds.y_train.shape == (1000, 10) and ds.task == "regression"
    torch.testing.assert_close(ds.y_train, ds.x_train @ a.T)
    torch.testing.assert_close(ds.y_test, ds.x_test @ a.T)
    assert torch.equal(data.load("synthetic-linear", seed=3).x_train, ds.x_train)
    assert not torch.equal(data.load("synthetic-linear", seed=4).extra["A"], a)
    assert float(a.std()) == pytest.approx(1.0, abs=0.25) and abs(float(ds.x_train.std()) - 1) < 0.05


def test_augment_flip_and_crop():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    flipped = data.augment(x, g, flip=True, crop=0)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    cropped = data.augment(x, torch.Generator().manual_seed(1), flip=False, crop=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):   # each output is some 5x5 window of the zero-padded input (brute force over offsets)
        assert any(torch.equal(cropped[i], padded[i, :, r:r + 5, c:c + 5]) for r in range(5) for c in range(5))
    assert cropped.shape == x.shape
