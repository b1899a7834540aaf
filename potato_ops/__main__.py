"""``python -m potato_ops``: the ``potato-ops`` command."""

from potato_ops.cli import main

main()
