"""`python -m edgeloop` runs the edgeloop CLI."""

from edgeloop.commands import main

if __name__ == "__main__":
    main()
