"""Lifecycle and maintenance of a store: delete and rename, garbage collection, store check.

The protocol between a collector and concurrent writers is in FORMAT.md, "Garbage collection".
``guard`` is the writers' half (imported by the commit path); ``collect`` the collector's;
``lifecycle`` deletes and renames records; ``check`` verifies a whole store.
"""
