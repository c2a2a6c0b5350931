"""``python -m porch`` and the ``porch`` command: the CLI, once the build is known to be whole."""

import sys

from porch.variant import problem


def main() -> int:
    """Refuse to start a compiled build that would run some of its modules from source."""
    trouble = problem()
    if trouble is not None:
        sys.stderr.write(f"porch: {trouble}\n")
        return 1
    from porch.cli import main as cli  # after the check: importing it imports the compiled modules

    return cli()


if __name__ == "__main__":
    sys.exit(main())
