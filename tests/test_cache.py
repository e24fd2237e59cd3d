"""The cache of derived tensors: a file is used only for its key and intact, written atomically."""

import os
import warnings

import pytest
import torch

from nnsight_vla import cache


def test_a_written_file_reads_back_only_for_its_key_and_intact(tmp_path, monkeypatch):
    monkeypatch.setenv("NNSIGHT_VLA_HOME", str(tmp_path / "home"))
    path = cache.cache_dir("things") / "t.safetensors"
    assert path == tmp_path / "home" / "things" / "t.safetensors"
    assert cache.read(path, "k") == (None, {}, "absent")
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64),
               "c": torch.ones(2, dtype=torch.bfloat16)}
    cache.write(path, "k", tensors, {"note": "hello"})
    got, meta, why = cache.read(path, "k")
    assert why == "usable" and meta["note"] == "hello" and meta["sha256"] == cache.digest(tensors)
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"]  # no temporary file left
    assert cache.read(path, "other")[2] == "written for other code, versions or inputs"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the last tensor's bytes
    path.write_bytes(bytes(raw))
    assert cache.read(path, "k")[2] == "damaged: its content does not match its digest"
    path.write_bytes(b"not a safetensors file")
    assert cache.read(path, "k")[2].startswith("unreadable")


def test_the_digest_sees_names_values_and_dtypes():
    a = {"x": torch.zeros(4)}
    assert cache.digest(a) == cache.digest({"x": torch.zeros(4)})
    assert len({cache.digest(a), cache.digest({"y": torch.zeros(4)}), cache.digest({"x": torch.ones(4)}),
                cache.digest({"x": torch.zeros(2, dtype=torch.float64)})}) == 4


def test_an_unwritable_home_warns_and_makes_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match=r"cannot cache the thing in .*Set NNSIGHT_VLA_HOME to a writable folder"):
        with cache.locked(blocker / "sub" / "t.safetensors", "the thing") as writable:
            assert writable is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with cache.locked(tmp_path / "ok" / "t.safetensors", "the thing") as writable:
            assert writable and os.path.exists(tmp_path / "ok" / "t.lock")
