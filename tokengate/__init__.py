"""tokengate: the command line, the one-command dev stack, and what both services share at run time."""
