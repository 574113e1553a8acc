"""Objects of one's own that a config names by import path (``"package.module:name"``): scan
orders (``model.scan``) and output norms (``model.out_norm``)."""

from __future__ import annotations

import pkgutil


def resolve(name: str, what: str, form: str) -> object:
    """The object ``name`` names; where it does not import, a ValueError naming ``what`` and the
    path ``form`` it must take."""
    try:
        return pkgutil.resolve_name(name)
    except Exception as e:  # not installed, a typo, or an error inside the module
        raise ValueError(
            f"{what} {name!r} does not import ({type(e).__name__}: {e}); it must be "
            f"'{form}' with the module on the Python path (PYTHONPATH)"
        ) from e
