"""`python -m vdfarm` is the `vdfarm` command."""

from vdfarm.cli.main import main

main()
