"""rnnkit's version, in a module of its own: the bundle code stamps it into every bundle without
importing the package root (which imports the cells), and pyproject.toml reads it from here."""

__version__ = "0.1.0"
