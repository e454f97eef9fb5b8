"""The `dgae` command line: one module per subcommand under `cli.commands`, dispatched by `cli.main`."""
