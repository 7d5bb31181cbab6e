"""The persistent feature cache: hits across runs, content keys, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil

import numpy as np
from conftest import CLIPS, invoke, write_manifest

from editx_cli.cache import FeatureCache
from editx_cli.fingerprint import fingerprint_files


def _vad_manifest(tmp_path, src):
    return write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type"],
                          [["a", "edit", str(src), "vad"]])


def test_second_run_hits_the_cache(tmp_path):
    m = _vad_manifest(tmp_path, CLIPS / "pauses.wav")
    assert invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "o1", "-q").exit_code == 0
    assert invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "o2", "-q").exit_code == 0
    r1 = json.loads((tmp_path / "o1" / "report.json").read_text())
    r2 = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert (r1["tasks"][0]["cache_hits"], r1["tasks"][0]["cache_misses"]) == (0, 1)
    assert (r2["tasks"][0]["cache_hits"], r2["tasks"][0]["cache_misses"]) == (1, 0)
    assert r2["run"]["cache"]["hit_rate"] == 1.0
    assert (tmp_path / "o1" / "a.wav").read_bytes() == (tmp_path / "o2" / "a.wav").read_bytes()


def test_key_is_content_not_file_name(tmp_path):
    renamed = tmp_path / "renamed.wav"
    shutil.copy(CLIPS / "pauses.wav", renamed)
    invoke("batch", _vad_manifest(tmp_path, CLIPS / "pauses.wav"), "--engine", "dsp", "-o", tmp_path / "o1", "-q")
    (tmp_path / "m.csv").unlink()
    invoke("batch", _vad_manifest(tmp_path, renamed), "--engine", "dsp", "-o", tmp_path / "o2", "-q")
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["tasks"][0]["cache_hits"] == 1


def test_changed_checkpoint_changes_the_fingerprint(tmp_path):
    ckpt = tmp_path / "model.bin"
    ckpt.write_bytes(b"\x00" * 4096)
    a = fingerprint_files([ckpt], "v1")
    ckpt.write_bytes(b"\x00" * 4095 + b"\x01")
    assert fingerprint_files([ckpt], "v1") != a
    assert fingerprint_files([ckpt], "v2") != fingerprint_files([ckpt], "v1")


def _writer(directory: str, worker: int, n: int, queue) -> None:
    cache = FeatureCache(directory)
    errors = 0
    for i in range(n):
        key = cache.key("test", f"{i}", "fp")
        value = np.full(2000, i, dtype=np.int32)
        got, _ = cache.get_or_compute(key, lambda v=value: v)
        errors += int(not np.array_equal(got, value))
        cache.set(cache.key("own", f"{worker}-{i}", "fp"), value)
    cache.close()
    queue.put(errors)


def test_two_processes_writing_at_once(tmp_path):
    directory = str(tmp_path / "shared-cache")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(directory, w, 300, queue)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert [queue.get(), queue.get()] == [0, 0]
    cache = FeatureCache(directory)
    try:
        assert cache.stats()["entries"] == 300 + 2 * 300
        for w in range(2):
            for i in (0, 150, 299):
                assert int(cache.get(cache.key("own", f"{w}-{i}", "fp"))[0]) == i
    finally:
        cache.close()


def test_size_limit_evicts(tmp_path):
    cache = FeatureCache(tmp_path / "c", size_limit=200_000)
    for i in range(100):
        cache.set(f"k{i}", np.zeros(10_000, dtype=np.uint8))
    cache._cache.cull()
    assert cache.stats()["size_bytes"] <= 200_000 + 10_000 * 2
    assert cache.get("k99") is not None and cache.get("k0") is None
    cache.close()
