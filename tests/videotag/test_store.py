"""Feature store: round trip, lookups, atomic publish (a killed writer leaves nothing visible), refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from videotag.core.errors import StoreError
from videotag.core.feature_store import FeatureRecord, FeatureStore, ShardWriter, write_shard


def rec(vid: str, t: int = 6, d: int = 8, source: str | None = None, seed: int = 0) -> FeatureRecord:
    rng = np.random.default_rng(seed)
    return FeatureRecord(
        video_id=vid,
        features=rng.standard_normal((t, d)).astype(np.float32),
        source=source or f"/videos/{vid}.mp4",
        content_sha256="ab" * 32,
        duration=10.0,
        fps=29.97,
        decoded_frames=300,
        sample_indices=np.arange(t) * 3,
        sample_timestamps=np.arange(t) * 0.1,
        backbone="efficientnet_lite0",
        backbone_sha256="cd" * 32,
        meta={"width": 640, "height": 360, "rotation": 90, "codec": "h264"},
    )


def test_round_trip_and_format(tmp_path):
    r = rec("a/b c é", source="/vidéos/with space.mp4")
    path = write_shard(tmp_path / "s.h5", [r, rec("x", t=3, seed=1)])
    with h5py.File(path) as f:  # the documented layout
        assert f.attrs["format"] == "videotag.features" and f.attrs["format_version"] == 1
        ds = f["videos"]["a%2Fb%20c%20%C3%A9"]
        assert ds.dtype == np.float16 and ds.shape == (6, 8)
        assert list(f["index/video_id"].asstr()[()]) == ["a/b c é", "x"]
    with FeatureStore(path) as s:
        got = s.get("a/b c é")
        np.testing.assert_allclose(got.features, r.features, atol=2e-3)  # float16
        assert got.source == "/vidéos/with space.mp4" and got.fps == pytest.approx(29.97)
        assert got.decoded_frames == 300 and got.backbone == "efficientnet_lite0"
        np.testing.assert_array_equal(got.sample_indices, r.sample_indices)
        np.testing.assert_allclose(got.sample_timestamps, r.sample_timestamps)
        assert got.meta == {"width": 640, "height": 360, "rotation": 90, "codec": "h264"}
        assert s.resolve("/vidéos/with space.mp4") == "a/b c é" and s.resolve("nope") is None
        assert len(s) == 2 and "x" in s and s.backbones() == {("efficientnet_lite0", "cd" * 32)}
        with pytest.raises(StoreError, match="not in feature store"):
            s.get("missing")


def test_many_shards_in_a_directory(tmp_path):
    for i in range(5):
        write_shard(tmp_path / f"sub{i % 2}" / f"{i}.h5", [rec(f"v{i}", seed=i)])
    (tmp_path / "sub0" / ".7.h5.123.abcd.tmp").write_bytes(b"half-written")  # ignored
    with FeatureStore(tmp_path) as s:
        assert sorted(s.ids()) == [f"v{i}" for i in range(5)]
        assert s.location("v3")["path"].endswith("3.h5")


def test_duplicate_ids_refused(tmp_path):
    write_shard(tmp_path / "a.h5", [rec("v")])
    write_shard(tmp_path / "b.h5", [rec("v")])
    with pytest.raises(StoreError, match="appears in both"):
        FeatureStore(tmp_path)
    with pytest.raises(StoreError, match="already in this shard"), ShardWriter(tmp_path / "c.h5") as w:
        w.add(rec("v"))
        w.add(rec("v"))
    assert not (tmp_path / "c.h5").exists()


def test_bad_features_refused(tmp_path):
    bad = rec("nan")
    bad.features[2, 3] = np.nan
    with pytest.raises(StoreError, match="NaN"), ShardWriter(tmp_path / "n.h5") as w:
        w.add(bad)
    assert list(tmp_path.iterdir()) == []  # the aborted temp file is gone too


def test_on_exists_policies(tmp_path):
    p = tmp_path / "s.h5"
    write_shard(p, [rec("one")])
    with pytest.raises(StoreError, match="already exists"):
        write_shard(p, [rec("two")])
    write_shard(p, [rec("two")], on_exists="keep")
    assert FeatureStore(p).ids() == ["one"]
    write_shard(p, [rec("three")], on_exists="replace")
    assert FeatureStore(p).ids() == ["three"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.h5"]


def test_killed_writer_leaves_nothing_visible(tmp_path):
    """A writer SIGKILLed mid-shard: the final name never appears, readers see a consistent store."""
    write_shard(tmp_path / "done.h5", [rec("done")])
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).resolve().parents[2])!r})
        import numpy as np
        from videotag.core.feature_store import FeatureRecord, ShardWriter
        w = ShardWriter({str(tmp_path / "crash.h5")!r})
        for i in range(20):
            w.add(FeatureRecord(video_id=f"c{{i}}", features=np.ones((300, 64), np.float32), source="x"))
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == -9 and "written" in p.stdout
    assert not (tmp_path / "crash.h5").exists()
    leftovers = [x.name for x in tmp_path.iterdir() if x.name != "done.h5"]
    assert leftovers and all(x.startswith(".crash.h5.") and x.endswith(".tmp") for x in leftovers)
    with FeatureStore(tmp_path) as s:
        assert s.ids() == ["done"]


def test_not_a_store(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not a videotag feature file"):
        FeatureStore(tmp_path / "other.h5")
    with pytest.raises(StoreError, match="no such feature store"):
        FeatureStore(tmp_path / "missing.h5")
