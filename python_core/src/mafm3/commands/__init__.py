"""Sub-commands of `mafm3`, one module each (see `mafm3.cli`)."""
