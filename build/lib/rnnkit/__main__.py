"""``python -m rnnkit``: the same command line as the ``rnnkit`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
