"""NBD protocol errors and the one errno <-> NBD error map.

Rules: two kinds of protocol error, never mixed. `RemoteProtocolError` means
the peer broke the protocol (close the connection); `LocalProtocolError` means
our own code asked for something illegal (a bug on our side). Errors that a
*request* earns (EIO, ENOSPC, ...) are not exceptions of this module: they are
errno values translated with `errno_to_nbd` into the reply.
"""

import errno

from vdfarm.nbd import constants as c


class ProtocolError(Exception):
    """Base of the two protocol error kinds."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the NBD protocol."""


class LocalProtocolError(ProtocolError):
    """Our own code tried to send something illegal in the current state."""


_ERRNO_TO_NBD = {
    errno.EPERM: c.NBD_EPERM,
    errno.EACCES: c.NBD_EPERM,
    errno.EROFS: c.NBD_EPERM,
    errno.EIO: c.NBD_EIO,
    errno.ENOMEM: c.NBD_ENOMEM,
    errno.EINVAL: c.NBD_EINVAL,
    errno.ENOSPC: c.NBD_ENOSPC,
    errno.EDQUOT: c.NBD_ENOSPC,
    errno.EFBIG: c.NBD_ENOSPC,
    errno.EOVERFLOW: c.NBD_EOVERFLOW,
    errno.ENOTSUP: c.NBD_ENOTSUP,
    errno.ESHUTDOWN: c.NBD_ESHUTDOWN,
}

_NBD_TO_ERRNO = {
    c.NBD_EPERM: errno.EPERM,
    c.NBD_EIO: errno.EIO,
    c.NBD_ENOMEM: errno.ENOMEM,
    c.NBD_EINVAL: errno.EINVAL,
    c.NBD_ENOSPC: errno.ENOSPC,
    c.NBD_EOVERFLOW: errno.EOVERFLOW,
    c.NBD_ENOTSUP: errno.ENOTSUP,
    c.NBD_ESHUTDOWN: errno.ESHUTDOWN,
}


def errno_to_nbd(err: int) -> int:
    """Map a host errno to the NBD wire error; anything unknown is EIO."""
    return _ERRNO_TO_NBD.get(err, c.NBD_EIO)


def nbd_to_errno(err: int) -> int:
    """Map an NBD wire error to a host errno; anything unknown is EIO
    (the spec says a client should treat unknown values as EINVAL-like
    failures; EIO is the conservative choice for a block device)."""
    return _NBD_TO_ERRNO.get(err, errno.EIO)
