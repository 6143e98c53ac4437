"""tokengate: the command line, the dev stack, and run-time helpers both services share."""
