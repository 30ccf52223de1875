"""``python -m edgeflow`` is the ``edgeflow`` command (torchrun launches it this way)."""

from edgeflow.cli.app import main

if __name__ == "__main__":
    main()
