"""``python -m postoffice``: the same as the ``postoffice`` command."""

from postoffice.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
