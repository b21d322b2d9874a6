"""The device agent: an NBD server on the device that streams from the farm, fails over, and holds the device's write cache."""
