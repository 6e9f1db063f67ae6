"""One module per page family; each exposes ``routes(ctx)``."""
