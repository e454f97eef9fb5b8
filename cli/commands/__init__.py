"""Core `dgae` subcommands (one module each)."""
