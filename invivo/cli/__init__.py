"""Command line interface: ``invivo <command>``; one small module per command."""
