"""Entry point for ``python -m osapi`` and for the zipapp."""

from osapi.cli import run

if __name__ == "__main__":
    run()
