"""The ``backlens`` console command (``backlens.commands.main``)."""
