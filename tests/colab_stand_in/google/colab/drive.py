"""`drive.mount` as the notebook calls it. Colab mounts Google Drive with FUSE; the rehearsal
has already put a folder at /content/drive/MyDrive, so this checks what Colab would: the mount
point the notebook passes, and that the folder is there."""

from __future__ import annotations

import os

MOUNT_POINT = "/content/drive"


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    if os.path.realpath(mountpoint) != MOUNT_POINT:
        raise ValueError(f"the rehearsal's Drive is at {MOUNT_POINT}, not {mountpoint}")
    if not os.path.isdir(os.path.join(MOUNT_POINT, "MyDrive")):
        raise ValueError(f"{MOUNT_POINT}/MyDrive is missing: the rehearsal did not set up its Drive")
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms: int = 86400000) -> None:
    print("All changes made in this colab session should now be visible in Drive.")
