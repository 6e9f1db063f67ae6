"""The ``datarun`` command line: one module per command group, progress on stderr."""
