"""Command-line interface: thin sub-commands over the shared loading path."""
