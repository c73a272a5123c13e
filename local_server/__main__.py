"""``python -m local_server [flags]``: see ``local_server.cli``."""

from local_server.cli import main

if __name__ == "__main__":
    main()
