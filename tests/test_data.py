"""The data pipeline: loading, errors, subsets, augmentation, normalization."""
import contextlib
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import time
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from nbhelpers import data as D
from nbhelpers.config import ConfigError
from nbhelpers.data import (CIFAR10DataError, CifarLoader, Split, UnofficialCopyWarning,
                            crop_and_flip, load_cifar10, normalize, pad_images,
                            prepare_splits, random_crop_flip, write_synthetic_cifar10)


def _match_crops(padded: torch.Tensor, outputs: torch.Tensor):
    """For each output, the (top, left, flipped) windows of its padded input it equals exactly."""
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)          # (B, C, 9, 9, 32, 32)
    found = []
    for flipped in (False, True):
        target = outputs.flip(-1) if flipped else outputs
        same = (windows == target[:, :, None, None]).flatten(-2).all(-1).all(1)  # (B, 9, 9)
        for b, top, left in torch.nonzero(same).tolist():
            found.append((b, top, left, flipped))
    return found


def test_every_augmented_image_is_an_exact_crop_and_all_offsets_and_flips_occur():
    generator = torch.Generator().manual_seed(0)
    count = 8100
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    padded = pad_images(images)
    outputs = random_crop_flip(padded, generator)
    assert outputs.shape == (count, 3, 32, 32) and outputs.dtype == torch.uint8

    matches = []
    for start in range(0, count, 900):
        part = slice(start, start + 900)
        matches += [(b + start, *rest) for b, *rest in _match_crops(padded[part], outputs[part])]
    # Random pixels make every window unique: exactly one match per output.
    assert sorted(m[0] for m in matches) == list(range(count))

    offsets = torch.zeros(9, 9)
    flips = 0
    for _, top, left, flipped in matches:
        offsets[top, left] += 1
        flips += flipped
    expected = count / 81  # 100 per offset; binomial sd about 10
    assert offsets.min() > 0.6 * expected and offsets.max() < 1.4 * expected, offsets
    # sd of the flip share is 0.0056: 0.03 is over 5 sd.
    assert abs(flips / count - 0.5) < 0.03
    # Zero padding really is zero: a corner crop starts with the padding.
    corner = crop_and_flip(padded[:1], torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))
    assert corner[0, :, :4, :].eq(0).all() and torch.equal(corner[0, :, 4:, 4:], images[0, :, :28, :28])


def test_loader_batches_are_crops_of_the_right_images_with_the_right_labels():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=generator)
    ids = torch.arange(300)  # labels that name the image they belong to
    loader = CifarLoader(Split(images, ids), 64, train=True, seed=3)
    seen = []
    for batch, labels in loader:
        restored = torch.round((batch * 0.5 + 0.5) * 255).to(torch.uint8)
        matches = _match_crops(pad_images(images[labels]), restored)
        assert sorted(m[0] for m in matches) == list(range(len(labels)))
        seen += labels.tolist()
    assert sorted(seen) == list(range(300))  # every image once per epoch
    assert len(loader) == 5


def test_loader_order_depends_on_seed_and_epoch_only():
    split = Split(torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8), torch.arange(200))

    def epoch(seed, number):
        loader = CifarLoader(split, 50, train=True, seed=seed)
        loader.set_epoch(number)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch(1, 2), epoch(1, 2))
    assert not torch.equal(epoch(1, 2), epoch(1, 3))
    assert not torch.equal(epoch(1, 2), epoch(2, 2))


def test_loader_keeps_a_short_last_batch_but_never_a_single_image():
    split = Split(torch.zeros(257, 3, 32, 32, dtype=torch.uint8), torch.zeros(257, dtype=torch.long))
    assert [len(y) for _, y in CifarLoader(split, 128, train=True)] == [128, 128]
    assert [len(y) for _, y in CifarLoader(split, 128, train=False)] == [128, 128, 1]
    with pytest.raises(ValueError, match="batch_size"):
        CifarLoader(split, 0, train=True)


def test_normalize_matches_torchvision_to_tensor_and_normalize():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    reference = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    expected = torch.stack([reference(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images])
    assert torch.allclose(normalize(images), expected, atol=1e-6)
    extremes = normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    assert torch.allclose(extremes, torch.tensor([-1.0, 1.0]).expand(1, 3, 1, 2), atol=1e-6)
    assert torch.allclose(D.denormalize(normalize(images)) * 255, images.float(), atol=1e-4)


def test_synthetic_data_round_trips_through_the_loader(tmp_path):
    folder = write_synthetic_cifar10(tmp_path, train_per_class=7, test_per_class=3, seed=5)
    with pytest.warns(UnofficialCopyWarning):
        data = load_cifar10(tmp_path)
    assert data.train.images.shape == (70, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (30, 3, 32, 32)
    assert data.classes == D.SYNTHETIC_CLASS_NAMES and not data.official and data.synthetic
    assert torch.bincount(data.train.labels).tolist() == [7] * 10
    with open(folder / "data_batch_1", "rb") as fh:
        first = pickle.load(fh, encoding="latin1")
    assert torch.equal(data.train.images[:len(first["labels"])],
                       torch.from_numpy(first["data"]).view(-1, 3, 32, 32))
    assert data.train.labels[:len(first["labels"])].tolist() == first["labels"]


def test_data_root_comes_from_argument_then_environment_then_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_ROOT", str(tmp_path / "env"))
    assert D.resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert D.resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("CIFAR10_ROOT")
    assert D.resolve_data_root() == D.DATA_DIR


def test_subsets_are_class_balanced_first_images(synthetic_data):
    splits = prepare_splits(synthetic_data, train_subset=105, test_subset=50)
    counts = torch.bincount(splits.train.labels, minlength=10).tolist()
    assert sorted(counts) == [10] * 5 + [11] * 5 and sum(counts) == 105
    assert torch.bincount(splits.test.labels).tolist() == [5] * 10
    # The first images of each class, in file order.
    cat = torch.nonzero(synthetic_data.train.labels == 3).flatten()[:10]
    assert torch.equal(splits.train.images[splits.train.labels == 3][:10], synthetic_data.train.images[cat])
    # Errors name the parameter that asked for the impossible subset.
    with pytest.raises(ConfigError, match=r"^train_subset=5000 is not possible: it must be from 10 .* to 2,000"):
        prepare_splits(synthetic_data, train_subset=5000)
    # Fewer images than classes would leave some classes with no image at all.
    with pytest.raises(ConfigError, match=r"^test_subset=7 is not possible: it must be from 10 \(one image per class\)"):
        prepare_splits(synthetic_data, test_subset=7)


def test_validation_split_is_balanced_and_disjoint(synthetic_data):
    splits = prepare_splits(synthetic_data, train_subset=1000, val_size=200)
    assert len(splits.train) == 800 and len(splits.val) == 200
    assert torch.bincount(splits.val.labels).tolist() == [20] * 10
    flat = lambda s: {bytes(im.numpy()) for im in s.images}
    assert not flat(splits.train) & flat(splits.val)
    with pytest.raises(ConfigError, match="^val_size=100 leaves no training images"):
        prepare_splits(synthetic_data, train_subset=100, val_size=100)
    with pytest.raises(ConfigError, match="^val_size=5 is not possible"):
        prepare_splits(synthetic_data, train_subset=100, val_size=5)


# --- each bad data directory gives its promised error ----------------------

@pytest.fixture
def broken_copy(tmp_path):
    write_synthetic_cifar10(tmp_path, train_per_class=5, test_per_class=2)
    return tmp_path


def _load_error(root, download=False) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnofficialCopyWarning)
        with pytest.raises(CIFAR10DataError) as info:
            load_cifar10(root, download=download)
    message = str(info.value)
    assert "To fix it" in message and str(root) in message
    # Only paths a user has: no pointer to the machines this project is built on.
    assert "shared" not in message and "build_cifar10" not in message
    return message


def test_missing_folder_names_download_and_data_dir(tmp_path):
    message = _load_error(tmp_path / "nowhere")
    assert "does not exist" in message and "`-p download True`" in message
    assert "`-p data_dir PATH`" in message and "CIFAR10_ROOT" in message


def test_missing_file(broken_copy):
    (broken_copy / D.FOLDER / "data_batch_3").unlink()
    assert "data_batch_3 is missing" in _load_error(broken_copy)


def test_truncated_file(broken_copy):
    path = broken_copy / D.FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    assert "test_batch is truncated or corrupted" in _load_error(broken_copy)


def test_corrupted_file(broken_copy):
    (broken_copy / D.FOLDER / "batches.meta").write_bytes(np.random.bytes(500))
    assert "batches.meta is truncated or corrupted" in _load_error(broken_copy)


def test_file_with_wrong_content(broken_copy):
    path = broken_copy / D.FOLDER / "data_batch_2"
    with open(path, "wb") as fh:
        pickle.dump({"data": np.zeros((10, 100), np.uint8), "labels": [0] * 10}, fh)
    assert "data_batch_2 is not a CIFAR-10 batch" in _load_error(broken_copy)


def test_an_offline_machine_without_data_is_told_about_download_and_data_dir(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(D, "download_url", offline)
    message = _load_error(tmp_path, download=True)
    assert "seems to be offline" in message and "Temporary failure in name resolution" in message
    assert "download=True" in message and "`-p data_dir PATH`" in message and "CIFAR10_ROOT" in message


def test_the_synthetic_stand_in_cannot_pass_for_cifar10(tmp_path):
    write_synthetic_cifar10(tmp_path, train_per_class=2, test_per_class=1)
    with pytest.warns(UnofficialCopyWarning):
        data = load_cifar10(tmp_path)
    assert data.synthetic and not set(data.classes) & set(D.CLASS_NAMES)
    assert D.describe_data_dir(tmp_path).startswith("SYNTHETIC stand-in")
    assert "not CIFAR-10" in D.describe_data_dir(tmp_path)


def _fake_download(archive_bytes):
    def download(url, root, filename, md5):
        assert url.startswith("https://") and md5 == D.ARCHIVE_MD5
        (D.Path(root) / filename).write_bytes(archive_bytes)
    return download


def _stand_in_archive(tmp_path) -> bytes:
    """A tar.gz laid out as the official one, of a stand-in with 30 training images."""
    source = tmp_path / "source"
    write_synthetic_cifar10(source, train_per_class=3, test_per_class=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(source / D.FOLDER, arcname=D.FOLDER)
    return buffer.getvalue()


def test_download_fetches_and_unpacks_the_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "download_url", _fake_download(_stand_in_archive(tmp_path)))
    with pytest.warns(UnofficialCopyWarning):
        data = load_cifar10(tmp_path / "root", download=True)
    assert len(data.train) == 30


@contextlib.contextmanager
def _server_that_never_answers():
    """A server on 127.0.0.1 that accepts connections and sends nothing; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # the listener closed
                return
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)
        for connection in held:
            connection.close()


def test_a_stalled_download_stops_with_one_line_naming_the_url_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DOWNLOAD_STALL_SECONDS", 1)
    with _server_that_never_answers() as port:
        url = f"http://127.0.0.1:{port}/{D.ARCHIVE_NAME}"
        monkeypatch.setenv("CIFAR10_URL", url)
        started = time.monotonic()
        with pytest.raises(CIFAR10DataError) as raised:
            load_cifar10(tmp_path / "root", download=True)
        seconds = time.monotonic() - started
    message = str(raised.value)
    print(f"after {seconds:.2f} s: {message}")
    assert message.startswith(f"The download of {url} stalled: no data came for 1 s. To fix it:")
    assert "\n" not in message and "CIFAR10_URL" in message and "by hand" in message
    assert 1 <= seconds < 10
    assert socket.getdefaulttimeout() is None  # the timeout held for the download only


@pytest.mark.parametrize("url", ["file:///srv/cifar-10-python.tar.gz", "/srv/cifar-10-python.tar.gz"])
def test_a_mirror_that_is_no_web_address_is_refused_in_one_line(tmp_path, monkeypatch, url):
    monkeypatch.setenv("CIFAR10_URL", url)
    with pytest.raises(CIFAR10DataError, match=f"CIFAR10_URL='{url}' is not an http:// or https:// URL. To fix"):
        load_cifar10(tmp_path / "root", download=True)


@contextlib.contextmanager
def _serving(payload: bytes):
    """An HTTP server on 127.0.0.1 that answers every GET with `payload`; yields its URL and the paths asked."""
    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # no line on stderr per request
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_mirror_named_by_cifar10_url_is_fetched_and_checked_against_the_md5(tmp_path, monkeypatch):
    archive = _stand_in_archive(tmp_path)
    # The official md5 sum, as the test's own archive has it (a real mirror serves the official file).
    monkeypatch.setattr(D, "ARCHIVE_MD5", hashlib.md5(archive).hexdigest())
    with _serving(archive) as (address, asked):
        monkeypatch.setenv("CIFAR10_URL", f"{address}/mirror/{D.ARCHIVE_NAME}")
        with pytest.warns(UnofficialCopyWarning):
            data = load_cifar10(tmp_path / "root", download=True)
        assert len(data.train) == 30 and f"/mirror/{D.ARCHIVE_NAME}" in asked
        monkeypatch.setattr(D, "ARCHIVE_MD5", "0" * 32)  # the mirror's file is not the archive wanted
        with pytest.raises(CIFAR10DataError, match=f"The download of {address}/mirror/.* failed its md5 check"):
            load_cifar10(tmp_path / "elsewhere", download=True)


def test_download_refuses_an_archive_that_writes_outside_the_data_folder(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        payload = b"owned"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    monkeypatch.setattr(D, "download_url", _fake_download(buffer.getvalue()))
    with pytest.raises(CIFAR10DataError, match="is unsafe"):
        load_cifar10(tmp_path / "root", download=True)
    assert not (tmp_path / "escaped.txt").exists()


def test_the_jpeg_derived_copy_loads_with_one_warning(real_root):
    assert D.describe_data_dir(real_root) == "CIFAR-10 at data/cifar-10-batches-py"  # relative to the project
    D._load_folder.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10(real_root)
    ours = [w for w in caught if issubclass(w.category, UnofficialCopyWarning)]
    assert len(ours) == len(caught) == 1 and str(ours[0].message).startswith(
        "CIFAR-10 at data/cifar-10-batches-py is not the official release")  # as set, even where data/ links elsewhere
    assert data.train.images.shape == (50000, 3, 32, 32) and data.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.classes == D.CLASS_NAMES and not data.synthetic
    mean = data.train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-4)


def test_setup_on_the_stand_in_says_so_and_stamps_every_figure(tmp_path, capsys):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nbhelpers import plots
    from nbhelpers.notebook import setup
    write_synthetic_cifar10(tmp_path / "fake", train_per_class=2, test_per_class=1)
    try:
        setup(seed=0, data_dir=str(tmp_path / "fake"), device="cpu")
        assert "| data: SYNTHETIC stand-in at" in capsys.readouterr().out
        fig, _ = plt.subplots()
        plots.save(fig, "curve", tmp_path / "figures")
        plots.save(fig, "curve", tmp_path / "figures")  # stamped once, however often saved
        assert [t.get_text() for t in fig.texts] == ["SYNTHETIC stand-in data (stripe patterns), not CIFAR-10"]
        setup(seed=0, data_dir=str(tmp_path / "nowhere"), device="cpu")  # real data again: no stamp
        fig, _ = plt.subplots()
        plots.save(fig, "curve", tmp_path / "figures")
        assert fig.texts == []
    finally:
        plots.mark_figures(None)
        plt.close("all")
