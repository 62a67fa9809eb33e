"""The ``backlens`` console command (``backlens.commands.main``)."""

import os

# A command runs short passes, often on a busy machine. OpenMP threads that spin while they wait
# for each other (libgomp's default) then lose their cores to other processes and stall: on 2 busy
# cores `backlens explain` spent 3.6-7 s in the lens pass spinning against 0.6-0.9 s passive.
# Read when torch loads, so set here, before any command imports it; the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
