"""The one error the sample-image builder raises.

Rules: an `ImageBuildError` message names the missing tool, file or module (and,
when it helps, the Debian package that provides it), so the fix is one line.
"""


class ImageBuildError(RuntimeError):
    """The sample image could not be built: a tool, file or kernel module is missing or failed."""
