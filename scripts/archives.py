"""Safe extraction of zip and tar archives, and downloads written under a temporary name.

Every member is checked before anything is written: absolute paths, `..`, links that point
outside the target, hard links, device files and oversized contents are refused, so a refused
archive writes nothing at all.
"""

from __future__ import annotations

import http.client
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from scripts.steps import StepFailed, StepRefused
from trainer.atomic import partial_folder, replacing, sha256_of, write_atomically

# A zip bomb's tell: far more bytes out than in. Real image archives are near 1:1 (JPEGs do not
# compress); 200:1 is generous, and 20 GiB is more than any dataset this bundle is for.
MAX_RATIO = 200
MAX_TOTAL = 20 * 1024**3


class UnsafeArchive(StepRefused):
    def __init__(self, archive: Path, reason: str):
        super().__init__(f"{archive}: refused, {reason}", "nothing was extracted; use a trusted archive")


def _safe_name(archive: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(archive, f"member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchive(archive, f"member {name!r} climbs out with '..'")
    return path


def _inside(member: PurePosixPath, link: str) -> bool:
    """Does a symlink at `member` pointing to `link` stay inside the extraction folder?"""
    if link.startswith("/"):
        return False
    depth = 0
    for part in [*member.parent.parts, *PurePosixPath(link).parts]:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in (".", ""):
            depth += 1
    return True


def check_zip(archive: Path, handle: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members, total = [], 0
    for info in handle.infolist():
        _safe_name(archive, info.filename)
        # Unix file types live in the high bits of external_attr, when a Unix tool made the zip.
        kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
        if kind == stat.S_IFLNK:
            raise UnsafeArchive(archive, f"member {info.filename!r} is a symbolic link")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchive(archive, f"member {info.filename!r} is a special file")
        total += info.file_size
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1024**2:
            raise UnsafeArchive(
                archive, f"member {info.filename!r} expands {info.file_size // info.compress_size}x (a zip bomb)"
            )
        members.append(info)
    if total > MAX_TOTAL:
        raise UnsafeArchive(archive, f"it would expand to {total / 1024**3:.1f} GiB")
    return members


def check_tar(archive: Path, handle: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members, total = [], 0
    for info in handle.getmembers():
        name = _safe_name(archive, info.name)
        if info.islnk():
            raise UnsafeArchive(archive, f"member {info.name!r} is a hard link")
        if info.issym() and not _inside(name, info.linkname):
            raise UnsafeArchive(archive, f"member {info.name!r} links outside the target ({info.linkname})")
        if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
            raise UnsafeArchive(archive, f"member {info.name!r} is a device or fifo")
        total += info.size
        members.append(info)
    if total > MAX_TOTAL:
        raise UnsafeArchive(archive, f"it would expand to {total / 1024**3:.1f} GiB")
    # A tar's sizes are declared in its headers, so a gzip bomb shows as a total far beyond the
    # compressed file; the same 200:1 as a zip member, above the same 1 MiB.
    packed = max(archive.stat().st_size, 1)
    if total > 1024**2 and total / packed > MAX_RATIO:
        raise UnsafeArchive(archive, f"it expands {total // packed}x (a decompression bomb)")
    return members


def _size(count: int) -> str:
    return f"{count / 1024**3:.1f} GiB" if count >= 1024**3 else f"{count / 1024**2:.1f} MiB"


def _room_for(archive: Path, total: int, folder: Path) -> None:
    free = shutil.disk_usage(folder).free
    if total > free:
        raise StepFailed(
            f"{archive}: needs {_size(total)} to unpack, {_size(free)} free in {folder}",
            "free some space (or use a smaller archive); nothing was extracted",
        )


def extract(archive: Path, target: Path) -> Path:
    """Extract into a new folder beside `target` that then takes its name (an existing `target`
    is replaced whole, see trainer.atomic). A refused archive writes nothing and leaves
    `target` as it was. Returns target."""
    with partial_folder(target, replace=True) as partial:
        extract_into(archive, partial)
    return target


def extract_into(archive: Path, folder: Path) -> None:
    """Check every member, then extract into `folder` (a partial folder of the caller's, which
    makes the result appear whole); a refused archive writes nothing."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = check_zip(archive, handle)
            _room_for(archive, sum(info.file_size for info in members), folder)
            for info in members:
                handle.extract(info, folder)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as handle:
            members = check_tar(archive, handle)
            _room_for(archive, sum(info.size for info in members), folder)
            for info in members:
                info.mode &= 0o755  # never world-writable, never setuid
                handle.extract(info, folder, filter="tar" if hasattr(tarfile, "data_filter") else None)
    else:
        raise StepRefused(f"{archive}: neither a zip nor a tar archive", "check the source")


def checksum_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def fetch(target: Path, get, sha256: str | None = None, echo=print, what: str | None = None) -> Path:
    """A downloaded file at target that is known to be whole: `get(target)` writes it (through a
    temporary name), and its SHA-256 is recorded beside it as `NAME.sha256`.

    A file already there is reused only when it still matches that record (or the pinned
    `sha256`), so one damaged after the fact, or left by a run killed before it recorded the
    checksum, is fetched again. A download that does not match the pinned `sha256` is fetched
    once more, then refused.
    """
    record = checksum_file(target)
    for attempt in (1, 2):
        if target.is_file():
            try:
                expected = sha256 or record.read_text().split()[0]
            except (OSError, IndexError):
                expected = None
            if expected is not None and sha256_of(target) == expected:
                return target
            echo(
                f"{target.name}: "
                + ("checksum differs" if expected else "no checksum recorded")
                + "; fetching it again"
            )
            target.unlink()
        record.unlink(missing_ok=True)
        get(target)
        actual = sha256_of(target)
        if sha256 and actual != sha256:
            target.unlink()
            echo(f"{target.name} does not match --sha256" + ("; fetching it once more" if attempt == 1 else ""))
            continue
        write_atomically(record, f"{actual}  {target.name}\n")
        return target
    raise StepRefused(
        f"{what or target.name}: the download does not match --sha256 twice",
        "check the checksum, or the source changed",
    )


def download(url: str, destination: Path, echo=print, timeout: float = 60) -> Path:
    """HTTP(S) GET into destination via a temporary name, with a progress bar; a short or failed
    transfer leaves nothing at destination."""
    from tqdm import tqdm

    try:
        with replacing(destination) as temporary, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with (
                temporary.open("wb") as handle,
                tqdm(
                    total=expected, unit="B", unit_scale=True, desc=f"download {destination.name}", mininterval=1.0
                ) as bar,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
            if expected is not None and received != expected:
                raise StepFailed(
                    f"{url}: transfer cut short ({received} of {expected} bytes)", "retry; check the network"
                )
    except urllib.error.HTTPError as error:
        raise StepRefused(
            f"{url}: HTTP {error.code} {error.reason}", "check the URL and that it is shared publicly"
        ) from None
    except http.client.HTTPException as error:
        raise StepFailed(f"{url}: transfer cut short ({type(error).__name__})", "retry; check the network") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StepFailed(f"{url}: download failed ({reason})", "check the network and the URL") from None
    return destination
