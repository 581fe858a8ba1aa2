"""``python -m loradoc.cli``: the same entry point as the ``loradoc`` script."""

from loradoc.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
