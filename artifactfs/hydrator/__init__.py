"""Background and on-demand fetching of blob contents."""
