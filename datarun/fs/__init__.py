"""Reading bundles as files: ``datarun.open`` and the ``datarun://`` fsspec filesystem.

``datarun://REPO@LABEL/path/in/bundle`` (or ``@BUNDLE_ID``) names one file or folder of a
bundle. :mod:`datarun.fs.reader` is the seekable reader both use, with no fsspec needed;
:mod:`datarun.fs.spec` is the fsspec filesystem, registered under the ``fsspec.specs`` entry
point so pandas, pyarrow and DuckDB open such URLs by themselves.
"""
