"""Instructions, the output codec and typed results: one grammar for every task."""
