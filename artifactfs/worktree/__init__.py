"""Git integration for the working tree: the prepared index and following HEAD."""
