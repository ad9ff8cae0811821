"""The shared cache: an unreadable entry is a miss, and an entry many ask for at once is computed once."""

import os
import threading
import time

import torch

from safemax_ray import cache


def test_concurrent_callers_compute_an_entry_once_and_read_it_alike(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "HEARTBEAT_S", 0.2)
    path = str(tmp_path / "entry.safetensors")
    calls, results = [], {}
    started = threading.Event()

    def compute():
        calls.append(1)
        started.set()
        time.sleep(1.0)  # long enough that the second caller finds the claim
        return {"x": torch.arange(3.0)}

    def ask(name):
        results[name] = cache.compute_once(path, compute)

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    started.wait()
    assert os.path.exists(path + ".claim")  # held while computing
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    first.join()
    second.join()
    assert len(calls) == 1
    assert results["first"][1] is True and results["second"][1] is False
    assert torch.equal(results["first"][0]["x"], results["second"][0]["x"])
    assert not os.path.exists(path + ".claim")


def test_a_dead_holders_claim_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "HEARTBEAT_S", 0.1)
    path = str(tmp_path / "entry.safetensors")
    claim = path + ".claim"
    open(claim, "w").close()
    old = time.time() - 10  # not touched for 100 beats: its holder is gone
    os.utime(claim, (old, old))
    tensors, computed = cache.compute_once(path, lambda: {"x": torch.ones(2)})
    assert computed and torch.equal(cache.read(path)["x"], torch.ones(2)) and not os.path.exists(claim)


def test_an_unreadable_entry_is_a_miss_and_is_replaced(tmp_path):
    path = str(tmp_path / "entry.safetensors")
    cache.write(path, {"x": torch.ones(4)})
    with open(path, "r+b") as f:
        f.truncate(20)
    assert cache.read(path) is None
    tensors, computed = cache.compute_once(path, lambda: {"x": torch.zeros(4)})
    assert computed and torch.equal(cache.read(path)["x"], torch.zeros(4))
