"""sheepfs: a FUSE filesystem that shows every Sheepdog VDI as a regular file."""

__version__ = "0.1.0"
