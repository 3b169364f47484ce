"""``python -m recstream`` is the ``recstream`` command."""

from recstream.cli import main

if __name__ == "__main__":
    main()
