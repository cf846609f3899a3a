"""One module per ``cxrl`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
