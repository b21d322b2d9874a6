"""vdfarm: stream network-boot disk images (vDisks) over NBD from a farm of servers."""

__version__ = "0.1.0"
