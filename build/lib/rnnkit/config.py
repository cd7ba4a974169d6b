"""The JSON round trip every rnnkit config shares (bundles and checkpoints store configs as JSON)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

from .errors import RnnkitError

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for a frozen dataclass config: ``to_dict`` gives plain JSON types, ``from_dict`` inverts it.

    ``from_dict(c.to_dict()) == c``; a missing key takes its default and an unknown one raises,
    naming it and the known options (a bundle from a newer rnnkit, or a typo in a JSON file).
    Tuples become lists in JSON; a config that holds tuples turns lists back in ``__post_init__``.
    """

    KIND: ClassVar[str] = "config"  # how errors name this config: "unknown translator option(s)"

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The inverse of ``to_dict``."""
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RnnkitError(f"unknown {cls.KIND} option(s): {', '.join(unknown)}; "
                              f"known options: {', '.join(known)}")
        return cls(**data)
