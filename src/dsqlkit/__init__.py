"""dsqlkit: the Python toolkit for Amazon Aurora DSQL."""

__version__ = "0.1.0"
