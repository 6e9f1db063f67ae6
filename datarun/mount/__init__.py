"""A read-only, lazily fetched FUSE view of a bundle (``datarun bundle mount``).

The pieces stay apart, as in s3ql and the pyfuse3 examples: :mod:`inodes` turns the streamed
manifest into an on-disk SQLite table, :mod:`chunks` fetches, verifies and caches chunks, and
:mod:`ops` is the thin pyfuse3 Operations class that joins them. :mod:`runner` owns the
lifecycle: readiness, signals and unmount.
"""
