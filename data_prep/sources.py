"""Where the corpora come from, and getting their files: download, local copy, archive members."""

import os
import shutil
import tarfile
import zlib
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from data_prep.text import DataPrepError, atomic_write
from onmt_lma.base.files import sha256_of


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    default_source: str  # a base URL (ending in /) or a file URL
    files: tuple  # file names looked up in the source
    sha256: dict = field(default_factory=dict)  # known checksums, file name -> hex


OPE = Corpus(
    name="ope",
    description="OpenNMT integration-test corpus (news), Moses-tokenized, true case",
    default_source="https://raw.githubusercontent.com/OpenNMT/IntegrationTesting/master/data/",
    files=(
        "de-train-clean.200K.txt",
        "en-train-clean.200K.txt",
        "de-val-clean.10K.txt",
        "en-val-clean.10K.txt",
    ),
    sha256={
        "de-val-clean.10K.txt": "be4f9b8123a8b8cb74d0e07a8fabc413e3351f398381e5134b6f0ce843b92269",
        "en-val-clean.10K.txt": "2437b7601011e640b1e3fc9b03aa7292eae2634e9027214dc147f3e98f520ac7",
    },
)

WMT13_ARCHIVE = "training-parallel-europarl-v7.tgz"
WMT13_MEMBERS = ("training/europarl-v7.de-en.de", "training/europarl-v7.de-en.en")
WMT13 = Corpus(
    name="wmt13",
    description="WMT13 Europarl v7 German-English",
    default_source="https://www.statmt.org/wmt13/",
    files=(WMT13_ARCHIVE,),
)

MULTI30K = Corpus(
    name="multi30k",
    description="Multi30K task 1 (image captions), raw",
    default_source="https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/",
    files=tuple(
        f"{split}.{lang}.gz" for split in ("train", "val", "test_2016_flickr") for lang in ("de", "en")
    ),
    sha256={
        "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
        "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
        "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
        "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
        "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    },
)

CORPORA = {c.name: c for c in (OPE, WMT13, MULTI30K)}


def _locate(source, name):
    """(kind, location) of file ``name`` in ``source``: a local path or a URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        if parsed.path.endswith("/" + name):
            return "url", source
        return "url", source.rstrip("/") + "/" + name
    path = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(source)
    if path.is_dir():
        return "path", path / name
    if path.is_file() and path.name == name:
        return "path", path
    if not path.exists():
        raise DataPrepError(f"--source {source}: no such file or directory")
    raise DataPrepError(f"--source {source}: expected a directory holding {name}, or that file")


def _download(url, target):
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except OSError as error:
        raise DataPrepError(f"cannot download {url}: {error}") from None
    expected = response.headers.get("Content-Length")
    expected = int(expected) if expected else None
    received = 0
    with response, atomic_write(target, "wb") as out, tqdm(
        total=expected, unit="B", unit_scale=True, desc=f"downloading {Path(target).name}"
    ) as bar:
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)
            received += len(block)
            bar.update(len(block))
        if expected is not None and received != expected:
            raise DataPrepError(f"{url}: received {received} bytes, expected {expected} (interrupted?)")


def fetch(corpus, source, download_dir):
    """Every file of ``corpus`` from ``source`` into ``download_dir``, verified.

    Returns ``{file name: (path, sha256)}``.  Files already there with the known
    checksum (or, without one, already complete) are not fetched again.
    """
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    fetched = {}
    for name in corpus.files:
        kind, location = _locate(source, name)
        target = download_dir / name
        if kind == "path":
            if not Path(location).is_file():
                raise DataPrepError(f"--source {source}: {name} is missing there")
            if not target.exists() or target.stat().st_size != Path(location).stat().st_size or (
                sha256_of(target) != sha256_of(location)
            ):
                with atomic_write(target, "wb") as out, open(location, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        elif not target.exists():
            _download(location, target)
        digest = sha256_of(target)
        known = corpus.sha256.get(name)
        if known and digest != known:
            os.remove(target)
            raise DataPrepError(
                f"{name} from {location}: sha256 {digest}, expected {known} (corrupt or a different version)"
            )
        fetched[name] = (target, digest)
    return fetched


def _safe_member_name(name):
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts


def read_archive_members(archive, members, out_dir):
    """Extract only ``members`` of the tar ``archive`` into ``out_dir`` (flat, by base name).

    Refuses archives with members that would unpack outside a directory
    (absolute paths, ``..``, links), and lists expected members that are missing.
    """
    try:
        return _read_archive_members(archive, members, Path(out_dir))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:  # a truncated or corrupt archive
        raise DataPrepError(f"{archive}: not a readable tar archive ({type(error).__name__}: {error}); "
                            "remove it to download it again") from None


def _read_archive_members(archive, members, out_dir):
    tar = tarfile.open(archive)
    with tar:
        names = tar.getnames()
        unsafe = [n for n in names if not _safe_member_name(n)]
        if unsafe:
            raise DataPrepError(
                f"{archive}: refusing an archive with members outside its directory: {', '.join(unsafe[:5])}"
            )
        missing = [m for m in members if m not in names]
        if missing:
            raise DataPrepError(f"{archive}: missing members {', '.join(missing)}")
        paths = []
        for member in members:
            info = tar.getmember(member)
            if not info.isfile():
                raise DataPrepError(f"{archive}: member {member} is not a regular file")
            target = out_dir / PurePosixPath(member).name
            with tar.extractfile(info) as src, atomic_write(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            paths.append(target)
    return paths
