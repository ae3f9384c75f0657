"""hash_file: equal to hashlib over the whole bytes, streamed, and safe against changes."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from api.schemas import HASH_HEX_LENGTH, HashAlgorithm
from flows.compute import hashing
from flows.compute.errors import MediaError
from flows.compute.hashing import CHUNK_SIZE, hash_file

ALGORITHMS = [algorithm.value for algorithm in HashAlgorithm]
SIZES = {"empty": 0, "small": 1000, "over-buffer": 2 * CHUNK_SIZE + 12_345}


def random_file(path: Path, size: int, seed: int = 7) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_equals_hashlib_on_whole_bytes(tmp_path: Path, algorithm: str, size: int) -> None:
    data = random_file(tmp_path / "blob.bin", size)
    digest = hash_file(tmp_path / "blob.bin", algorithm)
    assert digest == hashlib.new(algorithm, data).hexdigest()
    assert len(digest) == HASH_HEX_LENGTH[HashAlgorithm(algorithm)]
    assert digest == digest.lower()


def test_default_is_sha256_and_enum_accepted(tmp_path: Path) -> None:
    data = random_file(tmp_path / "a.bin", 4096)
    assert hash_file(tmp_path / "a.bin") == hashlib.sha256(data).hexdigest()
    assert hash_file(tmp_path / "a.bin", HashAlgorithm.BLAKE2B) == hashlib.blake2b(data).hexdigest()


def test_unknown_algorithm_is_a_value_error(tmp_path: Path) -> None:
    random_file(tmp_path / "a.bin", 10)
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        hash_file(tmp_path / "a.bin", "crc32")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^gone\.wav does not exist$"):
        hash_file(tmp_path / "gone.wav")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(MediaError, match="folder is a directory"):
        hash_file(tmp_path / "folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable(tmp_path: Path) -> None:
    random_file(tmp_path / "locked.bin", 10)
    (tmp_path / "locked.bin").chmod(0)
    with pytest.raises(MediaError, match="locked.bin is not readable"):
        hash_file(tmp_path / "locked.bin")


def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(MediaError, match="pipe is not a regular file"):
        hash_file(tmp_path / "pipe")


class _AppendingHasher:
    """Wraps a real hasher; the first update appends to the file being hashed."""

    def __init__(self, algorithm: str, path: Path) -> None:
        self.inner = hashlib.new(algorithm)
        self.path = path
        self.touched = False

    def update(self, data: memoryview, /) -> None:
        if not self.touched:
            with open(self.path, "ab") as handle:
                handle.write(b"more bytes")
            self.touched = True
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


@pytest.mark.parametrize("size", [100, 3 * CHUNK_SIZE])
def test_change_while_hashing_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    path = tmp_path / "growing.wav"
    random_file(path, size)
    monkeypatch.setattr(hashing, "_new_hasher", lambda algorithm: _AppendingHasher(algorithm, path))
    with pytest.raises(MediaError, match=r"^growing\.wav changed while being hashed$"):
        hash_file(path)


def test_rewrite_in_place_same_size_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rewritten.bin"
    random_file(path, 1000)

    class Rewriting(_AppendingHasher):
        def update(self, data: memoryview, /) -> None:
            if not self.touched:
                path.write_bytes(bytes(1000))
                stat = path.stat()  # make the change visible even on coarse mtime clocks
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
                self.touched = True
            self.inner.update(data)

    monkeypatch.setattr(hashing, "_new_hasher", lambda algorithm: Rewriting(algorithm, path))
    with pytest.raises(MediaError, match="changed while being hashed"):
        hash_file(path)


def test_memory_is_bounded(tmp_path: Path) -> None:
    size = 16 * CHUNK_SIZE
    data = random_file(tmp_path / "big.bin", size)
    want = hashlib.sha256(data).hexdigest()
    del data
    tracemalloc.start()
    try:
        digest = hash_file(tmp_path / "big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == want
    assert peak < 2 * CHUNK_SIZE  # one reused buffer, not the file
