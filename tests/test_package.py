"""The package's public names, as a notebook sees them."""

import samam


def test_dir_lists_the_lazy_public_names():
    """They load on first access, so dir(samam) (tab completion, inspect.getmembers) missed them."""
    assert set(samam.__all__) <= set(dir(samam))
    assert all(getattr(samam, name) is not None for name in samam.__all__)
