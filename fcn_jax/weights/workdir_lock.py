"""One training run per workdir: an exclusive lock on WORKDIR/.lock, held while the run trains.

Two processes training the same workdir would both resume it and write every metrics row twice. flock is
released by the kernel when its holder dies, kill -9 included, so a stale lock cannot block a resume. On a file
system without locks (NFS without lockd, some FUSE mounts) training goes on unlocked, with a warning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket

from fcn_jax.weights import artifacts

LOCK_FILE = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)  # NFS without lockd, some FUSE mounts


@contextlib.contextmanager
def hold(workdir: str, active: bool = True):
    """Hold the workdir's lock (process 0 of a run takes it for all its processes: `active`), or raise a
    WorkdirError naming the holder."""
    if not active:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise artifacts.WorkdirError(
                f"{workdir} is being trained by {holder}; wait for it to end (or stop it), or use another "
                "--workdir") from None
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
            logging.warning("%s: the file system does not lock files (%s): nothing stops a second run from "
                            "training this workdir at the same time", workdir, error.strerror)
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
