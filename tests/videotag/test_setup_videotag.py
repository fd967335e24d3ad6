"""`videotag setup videotag`: archives in VideoTag's exact layout (gzip tars named .tar, two folders with
.pdmodel/.pdopt/.pdparams) made from generated weights with VideoTag's names, served by a real HTTP server on
127.0.0.1; the downloader's resume/retry/limits; every bad case ends with a clear message and nothing installed."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.httpserver import FileServer
from tests.reference import numpy_paddle as ref
from videotag.core.vocab import VIDEOTAG_LABELS, Vocabulary
from videotag.download import DownloadError, download, part_path

REPO = Path(__file__).resolve().parents[2]


def _pickle(params: dict) -> bytes:
    return pickle.dumps(params, protocol=2)  # fluid.save's protocol


def write_archive(path: Path, folder: str, stem: str, pdparams: bytes, members: dict[str, bytes] | None = None) -> Path:
    """A gzip-compressed tar (named .tar, as VideoTag's are) holding folder/{stem}.pdmodel/.pdopt/.pdparams."""
    files = members if members is not None else {
        f"{folder}/{stem}.pdmodel": b"program placeholder",
        f"{folder}/{stem}.pdopt": b"optimiser placeholder",
        f"{folder}/{stem}.pdparams": pdparams,
    }  # fmt: skip
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def videotag(*args: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "videotag", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def _env(tmp: Path) -> dict:
    return {**os.environ, "VIDEOTAG_WEIGHTS_DIR": str(tmp / "weights"), "XDG_CACHE_HOME": str(tmp / "cache"),
            "VIDEOTAG_PROVIDERS": '["CPUExecutionProvider"]', "COLUMNS": "200"}  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """VideoTag's two archives, full size (ResNet-101, 3396-class Attention-LSTM), random values."""
    d = tmp_path_factory.mktemp("release")
    tsn = _pickle(ref.random_tsn_params(101, seed=0))
    lstm = _pickle(ref.random_attention_lstm_params(3396, seed=1))
    write_archive(d / "video_tag_tsn.tar", "video_tag_tsn", "tsn", tsn)
    write_archive(d / "video_tag_lstm.tar", "attention_lstm", "attention_lstm", lstm)
    (d / "pdparams").mkdir()
    (d / "pdparams" / "tsn.pdparams").write_bytes(tsn)
    (d / "pdparams" / "attention_lstm.pdparams").write_bytes(lstm)
    return {"dir": d}


# ------------------------------------------------------------------------------------------- labels


def test_shipped_label_files() -> None:
    zh, en = Vocabulary.load(VIDEOTAG_LABELS["zh"]), Vocabulary.load(VIDEOTAG_LABELS["en"])
    shared = REPO.parent / "shared" / "videotag" / "label_3396.txt"
    assert len(zh) == len(en) == 3396
    from videotag.core.hashing import sha256_file

    # the file as VideoTag released it (sha256 from ../shared/videotag/README.md)
    assert sha256_file(VIDEOTAG_LABELS["zh"]) == "92507963238ae2f690203e2db1d38686a4beedea2558cc0b7ad25b23eaa21d4d"
    if shared.is_file():
        assert VIDEOTAG_LABELS["zh"].read_bytes() == shared.read_bytes()
    assert all(n.strip() == n and n for n in en.names)
    cjk = ("\u3000", "\u9fff"), ("\uf900", "\ufaff"), ("\uff00", "\uffef")
    assert not [n for n in en.names if any(a <= c <= b for c in n for a, b in cjk)]
    lowered = [n.lower() for n in en.names]
    assert len(set(lowered)) == len(lowered), "English names must be distinguishable"
    assert len(set(zh.names)) == 3386  # VideoTag's 10 names that occur twice stay apart by id


# ------------------------------------------------------------------------------------------- downloader


def test_download_resumes_after_a_cut_connection(tmp_path) -> None:
    data = np.random.default_rng(0).bytes(3 << 20)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(data)
    with FileServer(tmp_path / "srv") as srv:
        srv.faults.cut_after = 1 << 20
        got = download(f"{srv.url}/f.bin", tmp_path / "out" / "f.bin", retries=2, backoff_s=0)
        ranges = [r["range"] for r in srv.faults.requests]
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert got.size == len(data) and not part_path(got.path).exists()
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")  # resumed, not restarted


def test_download_retries_5xx_and_reports_4xx(tmp_path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(b"x" * 1000)
    with FileServer(tmp_path / "srv") as srv:
        srv.faults.status_first = [500, 503]
        got = download(f"{srv.url}/f.bin", tmp_path / "f.bin", retries=3, backoff_s=0)
        assert got.size == 1000
        with pytest.raises(DownloadError, match="HTTP 404") as e:
            download(f"{srv.url}/nothere.bin", tmp_path / "n.bin", retries=3, backoff_s=0)
        assert not e.value.transient
        srv.faults.status_first = [500] * 5
        with pytest.raises(DownloadError, match="gave up after 2 tries") as e:
            download(f"{srv.url}/f.bin", tmp_path / "g.bin", retries=1, backoff_s=0)
        assert e.value.transient


def test_download_interrupted_then_resumed_and_size_limit(tmp_path) -> None:
    data = np.random.default_rng(1).bytes(4 << 20)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "f.bin").write_bytes(data)

    def ctrl_c(done: int, total: int | None) -> None:
        if done >= 2 << 20:
            raise KeyboardInterrupt

    dest = tmp_path / "f.bin"
    with FileServer(tmp_path / "srv") as srv:
        with pytest.raises(KeyboardInterrupt):
            download(f"{srv.url}/f.bin", dest, progress=ctrl_c)
        assert part_path(dest).stat().st_size >= 2 << 20 and not dest.exists()
        got = download(f"{srv.url}/f.bin", dest)
        assert got.resumed_from >= 2 << 20 and dest.read_bytes() == data
        with pytest.raises(DownloadError, match="over the limit"):
            download(f"{srv.url}/f.bin", tmp_path / "big.bin", max_bytes=1 << 20)


# ------------------------------------------------------------------------------------------- bad cases (CLI)


def test_no_network_says_how_to_install_by_hand(tmp_path) -> None:
    r = videotag("setup", "videotag", "--source", "http://videotag-mirror.invalid/files", env=_env(tmp_path))
    assert r.returncode != 0
    assert "cannot resolve the host" in r.stderr and "--source DIR" in r.stderr, r.stderr
    assert "video_tag_tsn.tar" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "weights" / "videotag").exists()


def test_corrupt_and_wrong_archives_are_named(tmp_path) -> None:
    good_lstm = write_archive(tmp_path / "ok_lstm.tar", "attention_lstm", "attention_lstm", b"not used")
    src = tmp_path / "src"
    src.mkdir()
    full = write_archive(tmp_path / "t.tar", "video_tag_tsn", "tsn", np.random.default_rng(2).bytes(300_000))
    (src / "video_tag_tsn.tar").write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # truncated gzip
    (src / "video_tag_lstm.tar").write_bytes(good_lstm.read_bytes())
    r = videotag("setup", "videotag", "--source", str(src), env=_env(tmp_path))
    assert r.returncode != 0 and "truncated or corrupt" in r.stderr and "video_tag_tsn.tar" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    write_archive(src / "video_tag_tsn.tar", "", "", b"", members={"other/readme.txt": b"hello"})
    r = videotag("setup", "videotag", "--source", str(src), env=_env(tmp_path))
    assert r.returncode != 0 and "no video_tag_tsn/tsn.pdparams inside" in r.stderr and "other/readme.txt" in r.stderr
    (src / "video_tag_lstm.tar").unlink()
    r = videotag("setup", "videotag", "--source", str(src), env=_env(tmp_path))
    assert r.returncode != 0 and "video_tag_lstm.tar not found" in r.stderr
    assert not (tmp_path / "weights" / "videotag").exists()
    assert not [p for p in (tmp_path / "weights").glob("*")] if (tmp_path / "weights").exists() else True


def test_corrupt_download_is_removed_from_the_cache(tmp_path) -> None:
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    write_archive(srv_dir / "video_tag_lstm.tar", "attention_lstm", "attention_lstm", b"x")
    (srv_dir / "video_tag_tsn.tar").write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    with FileServer(srv_dir) as srv:
        r = videotag("setup", "videotag", "--source", srv.url, env=_env(tmp_path))
    assert r.returncode != 0 and "removed it from the cache" in r.stderr, r.stderr
    cache = tmp_path / "cache" / "videotag" / "videotag"
    assert not (cache / "video_tag_tsn.tar").exists() and (cache / "video_tag_lstm.tar").exists()


# ------------------------------------------------------------------------------------------- the happy path


@pytest.mark.slow
def test_setup_from_a_mirror_then_tag_in_english_and_chinese(release, tmp_path, video_factory) -> None:
    """One command installs the bundle; tags come in English by default, Chinese with --lang zh (same ids and
    probabilities), identical to `import-videotag` on the same weights; `models` lists it."""
    env = _env(tmp_path)
    clip = video_factory("setup_clip.mp4", frames=12)
    with FileServer(release["dir"]) as srv:
        srv.faults.cut_after = 5 << 20  # the first archive's connection is cut: the download resumes
        r = videotag("setup", "videotag", "--source", srv.url, env=env)
        assert r.returncode == 0, r.stderr
        assert any(q["range"] for q in srv.faults.requests)
    bundle = tmp_path / "weights" / "videotag"
    man = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert man["default_language"] == "en" and set(man["languages"]) == {"en", "zh"}
    assert man["sampling"] == "segment"
    assert [d["file"] for d in man["downloads"]] == ["video_tag_tsn.tar", "video_tag_lstm.tar"]
    for d in man["downloads"]:
        local = release["dir"] / d["file"]
        assert d["size"] == local.stat().st_size and d["url"] == f"{srv.url}/{d['file']}"
        from videotag.core.hashing import sha256_file

        assert d["sha256"] == sha256_file(local)

    def tag(*extra: str) -> list:
        r = videotag("tag", "--model", *extra, "--frames", "4", "--json", str(clip), env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])["tags"]

    en, zh = tag("videotag"), tag("videotag", "--lang", "zh")
    assert len(en) == 20
    en_names, zh_names = Vocabulary.load(VIDEOTAG_LABELS["en"]), Vocabulary.load(VIDEOTAG_LABELS["zh"])
    assert [t["class_name"] for t in en] == [en_names[t["class_id"]] for t in en]
    assert [t["class_name"] for t in zh] == [zh_names[t["class_id"]] for t in zh]
    assert [(t["class_id"], t["probability"]) for t in en] == [(t["class_id"], t["probability"]) for t in zh]
    r = videotag("tag", "--model", "videotag", "--lang", "fr", str(clip), env=env)
    assert r.returncode == 2 and "no 'fr' class names" in r.stderr and "en, zh" in r.stderr.replace("zh, en", "en, zh")

    imported = tmp_path / "imported"
    p = release["dir"] / "pdparams"
    r = videotag("import-videotag", "--tsn", str(p / "tsn.pdparams"), "--lstm", str(p / "attention_lstm.pdparams"),
                 "--labels", str(VIDEOTAG_LABELS["zh"]), "--out", str(imported), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert tag(str(imported)) == en

    r = videotag("models", "--json", env=env)
    listed = json.loads(r.stdout)
    names = {m["name"]: m for m in listed["installed"]}
    assert names["videotag"]["classes"] == 3396 and set(names["videotag"]["languages"]) == {"en", "zh"}
    assert {m["name"]: m["installed"] for m in listed["available"]}["videotag"] is True
