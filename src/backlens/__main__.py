"""``python -m backlens``: the ``backlens`` command."""

from backlens.commands.resident import console

if __name__ == "__main__":
    console()
