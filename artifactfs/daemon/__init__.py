"""The long-running mount process: start-up, control socket, and shutdown."""
