"""Pieces every stage shares: user errors, the CLI runner, device choice, checkpoint reading, progress."""
