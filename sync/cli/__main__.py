"""``python -m sync.cli``: the same command as ``partnero-sync``."""

from sync.cli import main

if __name__ == "__main__":
    main()
