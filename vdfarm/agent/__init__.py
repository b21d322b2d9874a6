"""The device agent: an NBD server on the device that streams from the farm
and fails over between its servers (issue 11). Imports only vdfarm.nbd,
vdfarm.block and the standard library, so it runs on a small device."""
